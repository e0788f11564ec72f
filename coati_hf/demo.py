"""The end-to-end demo on the embedded SmolLM2-135M-Instruct, sized for a laptop CPU.

Each stage's ``save_model`` writes an ordinary Hugging Face folder under ``output_dir`` that
reloads with plain ``from_pretrained``, with a model card (README.md) and training curves:

    sft/            stage 1, supervised fine-tuning with LoRA on the shipped bilingual set
    reward_model/   stage 2, a reward model (sequence classifier, num_labels=1) on the shipped pairs
    ppo/            stage 3, PPO with LoRA on the shipped prompts, rewarded by stage 2's model;
                    the actor at ppo/ (merged, adapter in ppo/adapter), the critic in ppo/critic

The closing summary says where each model is, the reward model's accuracy on held-out pairs,
the mean reward of the SFT and the PPO policy on held-out prompts (greedy answers scored by the
reward model, as ``coati-hf generate --reward-model`` does), and how to talk to the result.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

logger = logging.getLogger(__name__)

# How each stage's card names its training data (the shipped samples have no Hub id).
_SAMPLE_DESCRIPTIONS = {
    name: f"coati_hf's bundled bilingual sample {name}.jsonl (coati_hf/data/samples)"
    for name in ("sft", "preferences", "prompts")
}


def _lora(task_type: str):
    from peft import LoraConfig

    return LoraConfig(
        r=8,
        lora_alpha=16,
        lora_dropout=0.0,
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
        task_type=task_type,
    )


# Held out from training: the last 16 preference pairs (reward-model accuracy) and prompts (before/after PPO).
_TRAIN_ROWS, _HELD_OUT_ROWS = range(96), range(96, 112)
_SUMMARY_NEW_TOKENS = 48


def run_demo(output_dir: str = "outputs/demo", steps: int = 8, ppo_steps: int | None = None) -> dict:
    """Run SFT → RM → PPO, print the closing summary and return ``{stage: folder}`` plus
    ``"ppo_log"`` (PPO's log history) and ``"summary"`` (the numbers the summary shows).

    ``steps`` optimizer steps for SFT and RM; ``ppo_steps`` PPO updates (default ``steps // 4``,
    at least 2: a PPO update on 2 CPU cores takes about half a minute).
    """
    from .chat import mean_score
    from .data import load_sample
    from .models import EMBEDDED_MODEL_NAME, load_causal_lm, load_sequence_classifier
    from .quiet import silence_peft_checkpointing_notice
    from .ppo.config import PPOConfig
    from .ppo.trainer import PPOTrainer
    from .reward import RewardConfig, RewardTrainer
    from .sft import SFTConfig, SFTTrainer

    silence_peft_checkpointing_notice()  # peft reads a property transformers 5 deprecated
    output = Path(output_dir)
    folders: dict[str, str] = {}
    common = dict(report_to="none", logging_steps=1, save_strategy="no", activation_checkpointing=False, seed=0)

    started = time.time()
    logger.info("[demo] stage 1/3: SFT with LoRA on %s", EMBEDDED_MODEL_NAME)
    policy, tokenizer = load_causal_lm(EMBEDDED_MODEL_NAME)
    sft = SFTTrainer(
        model=policy,
        # Coati's per-turn loss on its conversations: every assistant turn learned, user/system turns masked.
        args=SFTConfig(output_dir=str(output / "sft"), max_steps=steps, per_device_train_batch_size=4, learning_rate=2e-4,
                       max_length=192, assistant_only_loss=True, **common),
        train_dataset=load_sample("sft"),
        processing_class=tokenizer,
        peft_config=_lora("CAUSAL_LM"),
    )
    sft.train()
    sft.create_model_card(dataset_name=_SAMPLE_DESCRIPTIONS["sft"])
    sft.save_model(str(output / "sft"))
    folders["sft"] = str(output / "sft")

    logger.info("[demo] stage 2/3: reward model on the shipped preference pairs")
    reward_model, rm_tokenizer = load_sequence_classifier(folders["sft"])
    preferences = load_sample("preferences")
    rm = RewardTrainer(
        model=reward_model,
        # a new score head and LoRA: a high rate makes a few steps separate chosen from rejected clearly
        args=RewardConfig(output_dir=str(output / "reward_model"), max_steps=steps, per_device_train_batch_size=4, learning_rate=1e-3,
                          max_length=384, per_device_eval_batch_size=8, **common),  # every shipped pair fits
        train_dataset=preferences.select(_TRAIN_ROWS),
        eval_dataset=preferences.select(_HELD_OUT_ROWS),
        processing_class=rm_tokenizer,
        peft_config=_lora("SEQ_CLS"),
    )
    rm.train()
    rm_accuracy = rm.evaluate()["eval_accuracy"]  # logged: the card's model-index reports it too
    held_out_pairs = len(rm.eval_dataset)  # the pairs the accuracy is over (a pair too long would be dropped)
    rm.create_model_card(dataset_name=_SAMPLE_DESCRIPTIONS["preferences"])
    rm.save_model(str(output / "reward_model"))
    folders["reward_model"] = str(output / "reward_model")

    logger.info("[demo] stage 3/3: PPO with LoRA, rewarded by the stage-2 model")
    ppo_steps = ppo_steps if ppo_steps is not None else max(2, steps // 4)
    actor, actor_tokenizer = load_causal_lm(folders["sft"])
    reward_model, _ = load_sequence_classifier(folders["reward_model"])
    ppo = PPOTrainer(
        args=PPOConfig(
            output_dir=str(output / "ppo"),
            per_device_train_batch_size=4,
            total_episodes=4 * ppo_steps,
            num_ppo_epochs=2,
            response_length=16,
            stop_token="eos",
            learning_rate=5e-5,
            kl_coef=0.05,
            max_prompt_length=128,
            num_sample_generations=0,  # the demo shows its completions once, at the end
            **common,
        ),
        processing_class=actor_tokenizer,
        model=actor,
        ref_model=None,
        reward_model=reward_model,
        train_dataset=load_sample("prompts").select(_TRAIN_ROWS),
        value_model=None,
        eval_dataset=load_sample("prompts").select(range(96, 100)),
        peft_config=_lora("CAUSAL_LM"),
    )
    ppo.train()
    ppo.create_model_card(dataset_name=_SAMPLE_DESCRIPTIONS["prompts"])
    ppo.save_model(str(output / "ppo"))
    folders["ppo"] = str(output / "ppo")
    folders["ppo_log"] = [entry for entry in ppo.state.log_history if "objective/kl" in entry]
    logger.info("[demo] answering %d held-out prompts with the SFT and the PPO policy", len(_HELD_OUT_ROWS))
    held_out = list(load_sample("prompts").select(_HELD_OUT_ROWS)["prompt"])
    answers = {stage: _scored_answers(folders[stage], folders["reward_model"], held_out) for stage in ("sft", "ppo")}
    summary = {
        "reward_model_accuracy": float(rm_accuracy),
        "held_out_pairs": held_out_pairs,
        "held_out_prompts": len(held_out),
        "ppo_updates": ppo.state.global_step,
        "mean_reward_sft": mean_score(answers["sft"]),
        "mean_reward_ppo": mean_score(answers["ppo"]),
        "seconds": time.time() - started,
    }
    folders["summary"] = summary
    print(side_by_side(answers["sft"], answers["ppo"]) + "\n" + closing_summary(folders, summary), flush=True)
    return folders


def _scored_answers(policy_folder: str, reward_folder: str, prompts: list) -> list[dict]:
    """The policy's greedy answers, scored by the reward model (``coati-hf generate``'s scoring)."""
    from .chat import GenerationSettings, generate_and_score

    settings = GenerationSettings(max_new_tokens=_SUMMARY_NEW_TOKENS, temperature=0.0, top_p=1.0)
    return generate_and_score(policy_folder, prompts, reward_folder, settings=settings, progress=False)


def _shorten(text: str, limit: int = 70) -> str:
    """One line of at most ``limit`` characters (whole characters: the answers are already so)."""
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 1] + "…"


def side_by_side(sft_rows: list[dict], ppo_rows: list[dict], count: int = 4) -> str:
    """The first ``count`` held-out prompts with the SFT and the PPO answer and their scores."""
    lines = ["", "Held-out prompts, answered before and after PPO (reward-model score in brackets):"]
    for sft, ppo in list(zip(sft_rows, ppo_rows))[:count]:
        question = next((m["content"] for m in reversed(sft["prompt"]) if m["role"] == "user"), "")
        lines += [
            f"  {_shorten(question)}",
            f"    SFT [{sft['score']:+.2f}] {_shorten(sft['completion'])}",
            f"    PPO [{ppo['score']:+.2f}] {_shorten(ppo['completion'])}",
        ]
    return "\n".join(lines)


def closing_summary(folders: dict, summary: dict) -> str:
    """The text the demo ends with: where the models are, what they scored, how to talk to them."""
    ppo = folders["ppo"]
    change = summary["mean_reward_ppo"] - summary["mean_reward_sft"]
    lines = [
        "",
        f"coati_hf demo finished in {summary['seconds']:.0f} s. Each folder is a Hub-ready model with its card (README.md):",
        f"  SFT policy     {folders['sft']}",
        f"  reward model   {folders['reward_model']}   accuracy on {summary['held_out_pairs']} held-out pairs: "
        f"{summary['reward_model_accuracy']:.2f}",
        f"  PPO policy     {ppo}   (its critic in {Path(ppo) / 'critic'})",
        f"Mean reward on {summary['held_out_prompts']} held-out prompts (greedy answers of up to "
        f"{_SUMMARY_NEW_TOKENS} tokens, scored by the reward model):",
        f"  before PPO (SFT policy)  {summary['mean_reward_sft']:+.3f}",
        f"  after PPO                {summary['mean_reward_ppo']:+.3f}   ({change:+.3f} after {summary['ppo_updates']} PPO "
        "updates: a demonstration of the pipeline; real runs take many more)",
        "Talk to the result:",
        f"  coati-hf chat {ppo}",
        f'  coati-hf chat {ppo} --prompt "What is the capital of France?" --temperature 0   (greedy: the same answer each time)',
        f"  coati-hf serve {ppo}          (a web chat on http://127.0.0.1:7860)",
        f"  coati-hf generate {ppo} --prompts my_prompts.jsonl --output answers.jsonl --reward-model {folders['reward_model']}",
        "",
    ]
    return "\n".join(lines)

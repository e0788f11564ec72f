"""PPOTrainer as a drop-in for TRL 1.12's experimental PPO, and how it takes bad input.

1. Compatibility: a script written the way TRL 1.12's PPO users wrote theirs
   (``tests/ppo_scripts/trl_style_ppo.py``, only the import is coati_hf's) runs end to end in a
   subprocess and leaves a policy, a critic and a trainer state that plain ``from_pretrained``
   reads; the attributes TRL's trainer exposed (``model.policy``, ``model.value_model``,
   ``ref_model``, ``reward_model``, ``generate_completions()``, ``push_to_hub(dataset_name=)``)
   exist and do what they did there. (Every TRL 1.12 ``PPOConfig`` field and default is pinned in
   ``test_ppo_math.py::test_config_has_every_trl_field_with_its_default``.)
2. Bad input: a reward head with several labels, over-long prompts (limit and context), a
   tokenizer without a pad token, NaN rewards (some: counted and skipped; all: a clear error that
   leaves the last checkpoint intact and resumable), a reward model with its own tokenizer.

Tiny random Llamas (hidden 64, 2 layers) with the SmolLM2 tokenizer, 6-token responses, one to
three updates per run.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from datasets import Dataset

from coati_hf.models import make_tiny_llama
from coati_hf.ppo.config import PPOConfig
from coati_hf.ppo.trainer import PPOTrainer

SCRIPT = Path(__file__).parent / "ppo_scripts" / "trl_style_ppo.py"
RESPONSE_LENGTH = 6
PROMPTS = [
    "What is the capital of France?",
    "Name three colours of the rainbow.",
    "Why is the sky blue?",
    "Write a haiku about autumn leaves.",
    "How many legs does a spider have?",
    "What does a compiler do?",
    "Give me a synonym for happy.",
    "Explain gravity in one sentence.",
]


pytestmark = pytest.mark.usefixtures("single_torch_thread")


@pytest.fixture
def tok(smol_tokenizer):
    return copy.deepcopy(smol_tokenizer)


def tiny(kind: str, tokenizer, seed: int = 0, **overrides):
    model, _ = make_tiny_llama(kind, seed=seed, tokenizer=tokenizer, **overrides)
    return model


def prompt_ids(tokenizer, texts=PROMPTS) -> Dataset:
    return Dataset.from_dict({"input_ids": [tokenizer(text, add_special_tokens=False)["input_ids"] for text in texts]})


def ppo_config(tmp_path, **overrides) -> PPOConfig:
    settings = dict(
        output_dir=str(tmp_path / "out"),
        per_device_train_batch_size=2,
        total_episodes=2,
        response_length=RESPONSE_LENGTH,
        num_ppo_epochs=1,
        learning_rate=1e-3,
        report_to="none",
        logging_steps=1,
        save_strategy="no",
        num_sample_generations=0,
        activation_checkpointing=False,
        disable_tqdm=True,
        seed=0,
    )
    settings.update(overrides)
    return PPOConfig(**settings)


def build(tmp_path, tokenizer, *, reward_model=None, policy=None, train_dataset=None, config=None, **kwargs):
    policy = policy if policy is not None else tiny("causal_lm", tokenizer, seed=0)
    reward_model = reward_model if reward_model is not None else tiny("sequence_classification", tokenizer, seed=1)
    return PPOTrainer(
        args=config if config is not None else ppo_config(tmp_path),
        processing_class=tokenizer,
        model=policy,
        ref_model=kwargs.pop("ref_model", None),
        reward_model=reward_model,
        train_dataset=train_dataset if train_dataset is not None else prompt_ids(tokenizer),
        **kwargs,
    )


def step_logs(trainer) -> list[dict]:
    return [entry for entry in trainer.state.log_history if "objective/kl" in entry]


def same_weights(a, b) -> bool:
    sb = b.state_dict()
    return all(torch.equal(value, sb[name]) for name, value in a.state_dict().items())


# ---------------------------------------------------------------------------------------------
# 1. TRL 1.12 compatibility
# ---------------------------------------------------------------------------------------------


def test_trl_style_script_runs_end_to_end(tmp_path, smol_tokenizer):
    """The TRL-style script: 112 chat prompts (100 held out), 2 updates of 4 prompts, then
    save_model and generate_completions; everything it wrote reloads with plain from_pretrained."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    from coati_hf.data import load_sample

    for kind, folder, seed in (("causal_lm", "policy", 0), ("sequence_classification", "reward", 1)):
        model, tokenizer = make_tiny_llama(kind, seed=seed, tokenizer=copy.deepcopy(smol_tokenizer))
        model.save_pretrained(tmp_path / folder)
        tokenizer.save_pretrained(tmp_path / folder)
    data = tmp_path / "prompts"
    data.mkdir()
    prompts = load_sample("prompts")["prompt"]
    assert len(prompts) > 100
    with open(data / "train.jsonl", "w") as handle:
        for messages in prompts:
            text = smol_tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            handle.write(json.dumps({"prompt": text}, ensure_ascii=False) + "\n")
    out = tmp_path / "out"
    command = [
        sys.executable, str(SCRIPT),
        "--dataset_name", str(data), "--dataset_train_split", "train",
        "--model_name_or_path", str(tmp_path / "policy"),
        "--sft_model_path", str(tmp_path / "policy"),
        "--reward_model_path", str(tmp_path / "reward"),
        "--output_dir", str(out),
        "--total_episodes", "8", "--per_device_train_batch_size", "4", "--num_mini_batches", "2",
        "--num_ppo_epochs", "1", "--response_length", str(RESPONSE_LENGTH),
        "--per_device_eval_batch_size", "50", "--missing_eos_penalty", "1.0",
        "--logging_steps", "1", "--report_to", "none", "--disable_tqdm", "true",
    ]  # fmt: skip
    env = dict(
        os.environ,
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        HF_DATASETS_CACHE=str(tmp_path / "datasets_cache"),
        OMP_NUM_THREADS="1",
        TOKENIZERS_PARALLELISM="false",
    )
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-4000:]

    policy = AutoModelForCausalLM.from_pretrained(out)
    critic = AutoModelForSequenceClassification.from_pretrained(out / "critic")
    assert critic.config.num_labels == 1
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert tokenizer.pad_token == "[PAD]" and tokenizer.pad_token_id == len(smol_tokenizer)
    # the brand-new pad id never reached the model configs (it is outside their embedding tables)
    assert policy.config.pad_token_id < policy.get_input_embeddings().num_embeddings
    assert critic.config.pad_token_id < critic.get_input_embeddings().num_embeddings
    initial = AutoModelForCausalLM.from_pretrained(tmp_path / "policy")
    assert not same_weights(policy, initial)  # trained

    state = json.loads((out / "checkpoint-2" / "trainer_state.json").read_text())
    assert state["global_step"] == state["max_steps"] == 2  # 8 episodes / 4 prompts per update
    logs = [entry for entry in state["log_history"] if "objective/kl" in entry]
    assert [entry["episode"] for entry in logs] == [4, 8]
    for name in ("objective/scores", "objective/rlhf_reward", "loss/policy_avg", "loss/value_avg", "val/ratio"):
        assert all(math.isfinite(entry[name]) for entry in logs), name
    assert all(entry["rollout/no_eos"] <= 4 for entry in logs)

    rows = [json.loads(line) for line in (out / "completions.jsonl").read_text().splitlines()]
    assert len(rows) == 100  # every held-out prompt
    assert set(rows[0]) == {"query", "model response", "score"}
    held_out = prompts[-100:]
    assert all(messages[-1]["content"] in row["query"] for messages, row in zip(held_out, rows))  # in order
    assert all(math.isfinite(row["score"]) for row in rows)


def test_trl_attributes_completions_and_push_to_hub(tmp_path, tok, monkeypatch):
    """model.policy / model.value_model / ref_model / reward_model play the roles TRL's did;
    generate_completions gives TRL's table; push_to_hub(dataset_name=) uploads the policy,
    critic/ and a model card naming the dataset, with coati_hf's tags."""
    import huggingface_hub
    import pandas as pd
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    policy = tiny("causal_lm", tok, seed=0)
    reward_model = tiny("sequence_classification", tok, seed=1)
    initial_policy = copy.deepcopy(policy)
    initial_reward = copy.deepcopy(reward_model)
    eval_texts = PROMPTS[:3]
    trainer = build(
        tmp_path, tok, policy=policy, reward_model=reward_model, eval_dataset=prompt_ids(tok, eval_texts)
    )
    assert trainer.model.policy is policy
    assert trainer.reward_model is reward_model
    critic = trainer.model.value_model
    assert critic is not reward_model and critic.config.num_labels == 1
    assert same_weights(critic, reward_model)  # value_model=None: the critic starts as the reward model
    assert trainer.ref_model is not policy and same_weights(trainer.ref_model, policy)
    assert not any(p.requires_grad for p in trainer.ref_model.parameters())

    trainer.train()
    assert trainer.state.global_step == 1
    assert not same_weights(trainer.model.policy, initial_policy)  # the actor trained
    assert not same_weights(trainer.model.value_model, initial_reward)  # the critic trained
    assert same_weights(trainer.ref_model, initial_policy)  # the reference stayed frozen
    assert same_weights(trainer.reward_model, initial_reward)  # the reward model too

    table = trainer.generate_completions()
    assert isinstance(table, pd.DataFrame)
    assert list(table.columns) == ["query", "model response", "score"]
    assert table["query"].tolist() == eval_texts
    assert table["score"].map(math.isfinite).all()

    uploads = []

    def create_repo(self, repo_id, **kwargs):
        return SimpleNamespace(repo_id=f"someone/{repo_id}")

    def create_commit(self, repo_id, operations, **kwargs):
        def content(op):
            return op.path_or_fileobj if isinstance(op.path_or_fileobj, bytes) else Path(op.path_or_fileobj).read_bytes()

        files = {op.path_in_repo: content(op) for op in operations if hasattr(op, "path_or_fileobj")}
        uploads.append(dict(repo_id=repo_id, files=set(files), card=files["README.md"].decode(), kwargs=kwargs))
        return SimpleNamespace(commit_url="https://example.invalid/commit")

    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", create_repo)
    monkeypatch.setattr(huggingface_hub.HfApi, "list_repo_files", lambda self, repo_id, **kwargs: [])
    monkeypatch.setattr(huggingface_hub.HfApi, "create_commit", create_commit)
    trainer.push_to_hub(dataset_name="someone/prompt-set")

    assert len(uploads) == 1  # one commit
    upload = uploads[0]
    assert upload["repo_id"] == "someone/out"
    weights = {"model.safetensors", "config.json", "tokenizer.json", "critic/model.safetensors", "critic/config.json"}
    assert weights <= upload["files"]
    assert not any(name.startswith("checkpoint-") for name in upload["files"])
    card = upload["card"]
    assert "someone/prompt-set" in card
    for tag in ("coati_hf", "coati-ppo", "ppo", "rlhf"):
        assert f"- {tag}\n" in card, tag
    pushed = AutoModelForCausalLM.from_pretrained(trainer.args.output_dir)
    assert same_weights(pushed, trainer.model.policy)  # the policy's weights, not the wrapper's
    pushed_critic = AutoModelForSequenceClassification.from_pretrained(Path(trainer.args.output_dir) / "critic")
    assert same_weights(pushed_critic, trainer.model.value_model)


# ---------------------------------------------------------------------------------------------
# 2. Bad input
# ---------------------------------------------------------------------------------------------


def test_reward_and_value_heads_must_have_one_label(tmp_path, tok):
    from transformers import AutoModelForSequenceClassification

    from coati_hf.models.tiny import tiny_llama_config

    config = tiny_llama_config(len(tok), tok.pad_token_id, tok.eos_token_id, num_labels=2)
    two_labels = AutoModelForSequenceClassification.from_config(config)
    assert two_labels.config.num_labels == 2
    with pytest.raises(ValueError, match=r"reward_model must be .*num_labels=1.*num_labels=2"):
        build(tmp_path, tok, reward_model=two_labels)
    with pytest.raises(ValueError, match=r"value_model must be .*num_labels=2"):
        build(tmp_path, tok, value_model=two_labels)


def test_prompt_longer_than_max_prompt_length(tmp_path, tok, caplog):
    texts = list(PROMPTS)
    texts[4] = " ".join(["a very long prompt"] * 10)
    dataset = prompt_ids(tok, texts)
    limit = 12
    others = [i for i in range(len(texts)) if i != 4]
    assert len(dataset[4]["input_ids"]) > limit >= max(len(dataset[i]["input_ids"]) for i in others)
    with pytest.raises(ValueError, match=r"train dataset, row 5\b.*max_prompt_length=12"):
        build(tmp_path, tok, train_dataset=dataset, config=ppo_config(tmp_path, max_prompt_length=limit))
    with pytest.raises(ValueError, match=r"eval dataset, row 5\b"):
        build(tmp_path, tok, eval_dataset=dataset, config=ppo_config(tmp_path, max_prompt_length=limit))

    with caplog.at_level(logging.WARNING, logger="coati_hf"):
        trainer = build(
            tmp_path,
            tok,
            train_dataset=dataset,
            config=ppo_config(tmp_path, max_prompt_length=limit, truncate_prompts=True),
        )
    assert any("1 over-long prompt" in record.getMessage() for record in caplog.records)
    kept = trainer.train_dataset["input_ids"]
    assert kept[4] == dataset[4]["input_ids"][-limit:]  # the last tokens are kept
    assert [kept[i] for i in others] == [dataset[i]["input_ids"] for i in others]  # the rest untouched
    trainer.train()
    assert trainer.state.global_step == 1


def test_prompt_longer_than_the_model_context(tmp_path, tok):
    context = 24
    policy = tiny("causal_lm", tok, seed=0, max_position_embeddings=context)
    texts = list(PROMPTS)
    texts[1] = " ".join(["word"] * 30)
    dataset = prompt_ids(tok, texts)
    assert context - RESPONSE_LENGTH < len(dataset[1]["input_ids"])
    with pytest.raises(ValueError, match=r"train dataset, row 2\b.*context of 24 tokens"):
        build(tmp_path, tok, policy=policy, train_dataset=dataset)
    with pytest.raises(ValueError, match=r"response_length=30 does not fit the model's context of 24"):
        build(tmp_path, tok, policy=policy, config=ppo_config(tmp_path, response_length=30))
    config = ppo_config(tmp_path, truncate_prompts=True)
    trainer = build(tmp_path, tok, policy=policy, train_dataset=dataset, config=config)
    assert max(len(ids) for ids in trainer.train_dataset["input_ids"]) == context - RESPONSE_LENGTH


def test_tokenizer_without_pad_token_gets_one_with_a_warning(tmp_path, tok, caplog):
    policy = tiny("causal_lm", tok, seed=0)
    reward_model = tiny("sequence_classification", tok, seed=1)
    tok.pad_token = None
    assert tok.pad_token_id is None
    with caplog.at_level(logging.WARNING, logger="coati_hf"):
        trainer = build(tmp_path, tok, policy=policy, reward_model=reward_model)
    assert any("no pad token" in record.getMessage() for record in caplog.records)
    assert tok.pad_token_id is not None and tok.pad_token_id != tok.eos_token_id
    assert trainer.model.policy.config.pad_token_id == tok.pad_token_id
    trainer.train()  # prompts of different lengths are padded with it
    assert trainer.state.global_step == 1


class ScriptedReward:
    """A rule-based reward whose call number ``k`` returns NaN for the rows in ``nan_rows[k]``
    (``"all"``: every row) and the completion's length otherwise."""

    def __init__(self, nan_rows: dict):
        self.nan_rows, self.calls = nan_rows, 0

    def __call__(self, prompts, completions):
        bad = self.nan_rows.get(self.calls, ())
        self.calls += 1
        return [float("nan") if bad == "all" or i in bad else float(len(c)) for i, c in enumerate(completions)]


def test_nan_scores_for_some_samples_are_counted_and_skipped(tmp_path, tok):
    # 4 prompts per update in 2 minibatches; update 2 keeps a single sample
    reward = ScriptedReward({0: {1}, 1: {0, 2, 3}})
    config = ppo_config(tmp_path, per_device_train_batch_size=4, total_episodes=12, num_mini_batches=2)
    trainer = build(tmp_path, tok, reward_model=reward, config=config)
    trainer.train()
    assert trainer.state.global_step == 3 and reward.calls == 3
    logs = step_logs(trainer)
    assert [entry["rollout/nan_scores"] for entry in logs] == [1, 3, 0]
    assert all(math.isfinite(entry["objective/scores"]) and math.isfinite(entry["loss/policy_avg"]) for entry in logs)
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())


def test_an_update_whose_every_score_is_nan_is_skipped_and_the_run_goes_on(tmp_path, tok):
    """Update 3's rewards are all NaN: it is skipped and counted (not an exception, which on
    several ranks would leave the others waiting), its checkpoint holds the weights of update
    2, and update 4 trains again. (tests/test_ppo_unusable_samples*.py: the same across ranks.)"""
    from transformers import AutoModelForCausalLM

    reward = ScriptedReward({2: "all"})
    config = ppo_config(tmp_path, total_episodes=8, save_strategy="steps", save_steps=1)
    trainer = build(tmp_path, tok, reward_model=reward, config=config)
    trainer.train()
    assert trainer.state.global_step == 4
    logs = step_logs(trainer)
    assert [entry["ppo/skipped_updates"] for entry in logs] == [0, 0, 1, 0]
    assert [entry["ppo/optimizer_steps"] for entry in logs] == [1, 1, 0, 1]
    assert [entry["rollout/nan_scores"] for entry in logs] == [0, 0, 2, 0]
    assert math.isnan(logs[2]["objective/scores"]) and math.isfinite(logs[3]["objective/scores"])
    checkpoints = Path(config.output_dir)
    saved = {step: AutoModelForCausalLM.from_pretrained(checkpoints / f"checkpoint-{step}") for step in (2, 3, 4)}
    assert same_weights(saved[2], saved[3])  # the skipped update changed nothing
    assert not same_weights(saved[3], saved[4])


# ---------------------------------------------------------------------------------------------
# A reward model with its own tokenizer
# ---------------------------------------------------------------------------------------------


def word_level_tokenizer():
    """A small WordLevel tokenizer trained on the shipped sample texts (a few hundred words)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from coati_hf.data import load_sample

    texts = list(PROMPTS) + [m["content"] for row in load_sample("prompts")["prompt"] for m in row]
    backend = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.train_from_iterator(texts, trainers.WordLevelTrainer(special_tokens=["[PAD]", "[UNK]", "[EOS]"]))
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="[PAD]", unk_token="[UNK]", eos_token="[EOS]")


def shifted_tokenizer(tokenizer, shift: int = 1000):
    """The same tokenizer with every id moved by ``shift`` (mod the vocabulary size)."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    size = len(spec["model"]["vocab"])
    spec["model"]["vocab"] = {token: (index + shift) % size for token, index in spec["model"]["vocab"].items()}
    for added in spec["added_tokens"]:
        added["id"] = (added["id"] + shift) % size
    return PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(json.dumps(spec)),
        pad_token=tokenizer.pad_token,
        eos_token=tokenizer.eos_token,
    )


def reference_scores(experience, policy_tokenizer, reward_model, reward_tokenizer) -> torch.Tensor:
    """Each rollout as text, tokenized alone by the reward tokenizer, scored by the model's own forward."""
    scores = []
    for row in range(len(experience)):
        mask = experience.attention_mask[row].bool()
        text = policy_tokenizer.decode(experience.sequences[row][mask], skip_special_tokens=False)
        encoded = reward_tokenizer(text, return_tensors="pt")
        with torch.no_grad():
            scores.append(reward_model(**encoded).logits[0, 0])
    return torch.stack(scores).float()


def rollout(trainer, tokenizer):
    batch = trainer.data_collator([{"input_ids": ids} for ids in prompt_ids(tokenizer, PROMPTS[:4])["input_ids"]])
    return trainer.experience_maker.make_experience(batch)


def test_reward_model_with_a_smaller_vocabulary_is_scored_on_retokenized_text(tmp_path, tok):
    reward_tokenizer = word_level_tokenizer()
    assert 100 < len(reward_tokenizer) < 2000
    reward_model = tiny("sequence_classification", reward_tokenizer, seed=3)
    assert reward_model.get_input_embeddings().num_embeddings == len(reward_tokenizer)

    with pytest.raises(ValueError, match=r"does not match the policy tokenizer.*reward_processing_class"):
        build(tmp_path, tok, reward_model=reward_model)

    with pytest.raises(ValueError, match=r"value_model has \d+ token embeddings, fewer than the policy's 49152"):
        build(
            tmp_path,
            tok,
            reward_model=reward_model,
            reward_processing_class=reward_tokenizer,
            value_model=copy.deepcopy(reward_model),
        )

    policy = tiny("causal_lm", tok, seed=0)
    trainer = build(tmp_path, tok, policy=policy, reward_model=reward_model, reward_processing_class=reward_tokenizer)
    assert trainer.experience_maker.retokenize_for_reward
    # the critic cannot start from a reward model that does not read the policy's tokens: it starts
    # from the policy's backbone, with a fresh value head
    critic = trainer.model.value_model
    assert critic.config.num_labels == 1 and critic.model.embed_tokens.weight.shape[0] == len(tok)
    assert torch.equal(critic.model.layers[0].mlp.up_proj.weight, policy.model.layers[0].mlp.up_proj.weight)
    experience = rollout(trainer, tok)
    expected = reference_scores(experience, tok, reward_model, reward_tokenizer)
    torch.testing.assert_close(experience.scores, expected, atol=1e-5, rtol=1e-4)
    trainer.train()
    assert trainer.state.global_step == 1 and math.isfinite(step_logs(trainer)[0]["objective/scores"])


def test_reward_model_with_a_permuted_vocabulary_of_the_same_size(tmp_path, tok):
    """Same vocabulary size, different ids: nothing in the model's shape gives it away. The
    tokenizer saved with the reward model is compared by content: without reward_processing_class
    that is an error saying what to pass; with it, completions are re-tokenized."""
    from transformers import AutoModelForSequenceClassification

    reward_tokenizer = shifted_tokenizer(tok)
    assert len(reward_tokenizer) == len(tok) and reward_tokenizer("sky")["input_ids"] != tok("sky")["input_ids"]
    reward_model = tiny("sequence_classification", reward_tokenizer, seed=3)
    folder = tmp_path / "reward_with_own_tokenizer"
    reward_model.save_pretrained(folder)
    reward_tokenizer.save_pretrained(folder)

    from_folder = AutoModelForSequenceClassification.from_pretrained(folder)
    with pytest.raises(ValueError, match=r"own tokenizer.*reward_processing_class=AutoTokenizer\.from_pretrained"):
        build(tmp_path, tok, reward_model=from_folder)

    trainer = build(tmp_path, tok, reward_model=from_folder, reward_processing_class=reward_tokenizer)
    assert trainer.experience_maker.retokenize_for_reward
    experience = rollout(trainer, tok)
    expected = reference_scores(experience, tok, trainer.reward_model, reward_tokenizer)
    torch.testing.assert_close(experience.scores, expected, atol=1e-5, rtol=1e-4)
    # scoring the policy's ids directly would have given other numbers
    assert not torch.allclose(reference_scores(experience, tok, trainer.reward_model, tok), expected, atol=1e-3)


def test_reward_tokenizer_of_the_same_ids_but_another_eos_is_a_difference(tok):
    """Tokenizers are compared by content, special tokens included, never by size."""
    from coati_hf.ppo.roles import tokenizer_difference

    same = copy.deepcopy(tok)
    assert tokenizer_difference(same, tok) is None
    other_eos = copy.deepcopy(tok)
    other_eos.eos_token = "<|endoftext|>" if tok.eos_token != "<|endoftext|>" else "<|im_start|>"
    assert "eos_token" in tokenizer_difference(other_eos, tok)
    assert "is id" in tokenizer_difference(shifted_tokenizer(tok), tok)


def test_peft_policy_with_a_reward_of_another_vocabulary(tmp_path, tok):
    """With LoRA the critic cannot share the reward model's backbone either: it is a plain copy
    of the policy's backbone (the adapter merged in), and training runs."""
    from peft import LoraConfig

    reward_tokenizer = word_level_tokenizer()
    reward_model = tiny("sequence_classification", reward_tokenizer, seed=3)
    policy = tiny("causal_lm", tok, seed=0)
    trainer = build(
        tmp_path,
        tok,
        policy=policy,
        reward_model=reward_model,
        reward_processing_class=reward_tokenizer,
        peft_config=LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"),
    )
    critic = trainer.model.value_model
    assert trainer.ref_model is None and trainer.is_peft_model
    assert not hasattr(critic, "peft_config") and critic.get_input_embeddings().num_embeddings == len(tok)
    q_proj = policy.model.layers[0].self_attn.q_proj
    assert hasattr(q_proj, "base_layer")  # the policy got its LoRA layers...
    assert torch.equal(critic.model.layers[0].self_attn.q_proj.weight, q_proj.base_layer.weight)  # ...the critic none
    trainer.train()
    assert trainer.state.global_step == 1 and math.isfinite(step_logs(trainer)[0]["loss/value_avg"])


def test_sample_tables_end_at_a_whole_character_and_print_once_per_interval(tmp_path, tok, caplog):
    """A response cut at response_length inside a Chinese character shows no U+FFFD in the
    sample-completion table; the table is logged once per sampling interval, not per update."""
    from transformers import LogitsProcessor, LogitsProcessorList

    sentence = tok("人工智能是一种新的技术", add_special_tokens=False)["input_ids"]
    cut = next(n for n in range(1, len(sentence)) if "\ufffd" in tok.decode(sentence[:n]))

    class Say(LogitsProcessor):
        def __call__(self, input_ids, scores):
            step = input_ids.shape[1] - prompt_width[0]
            forced = torch.full_like(scores, -math.inf)
            forced[:, sentence[step]] = 0.0
            return forced

    prompt_width = [None]
    config = ppo_config(tmp_path, response_length=cut, total_episodes=8, num_sample_generations=2)
    trainer = build(tmp_path, tok, config=config, eval_dataset=prompt_ids(tok, PROMPTS[:2]))
    original_generate = trainer.experience_maker.policy.generate

    def generate(*args, **kwargs):
        prompt_width[0] = kwargs["input_ids"].shape[1]
        return original_generate(*args, **kwargs)

    trainer.experience_maker.policy.generate = generate
    trainer.experience_maker.generation_kwargs = {"logits_processor": LogitsProcessorList([Say()])}
    with caplog.at_level(logging.INFO, logger="coati_hf.ppo.trainer"):
        trainer.train()
    tables = [record for record in caplog.records if record.getMessage().startswith("Sample completions")]
    assert trainer.state.global_step == 4 and len(tables) == 2  # updates 1 and 3 of 4
    table = trainer.generate_completions()
    assert tok.decode(sentence[:cut]).endswith("\ufffd")  # the raw decode would show a broken character
    for response in table["model response"]:
        assert "\ufffd" not in response and response == tok.decode(sentence[:cut]).rstrip("\ufffd")

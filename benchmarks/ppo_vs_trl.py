"""coati_hf's PPOTrainer against TRL 1.12's, side by side, on the same workload and machine.

    python benchmarks/ppo_vs_trl.py                       # 3 repetitions x 4 runs, ~17 min on 2 cores
    python benchmarks/ppo_vs_trl.py --repeats 1 --iterations 2 --warmup 1    # a quick look
    python benchmarks/ppo_vs_trl.py --precision bf16 --random-init --model .gpu/smollm2 \
        --trl-python python3 --trl-pythonpath /tmp/site-trl112:/tmp/site --results-dir "$OUT"
                                                          # a GPU machine without the weights

Workload (the same ``PPOTrainer(...)`` call for every run): SmolLM2-135M-Instruct (the embedded
model, converted once), LoRA r=16 on q/k/v/o, 8 prompts per update (the shipped prompt set,
chat-templated), 32 new tokens (stop at EOS), one PPO epoch of one minibatch, fp32 (or
``--precision bf16``: ``bf16=True`` for both trainers, the models still loaded in fp32 as TRL's
example does, autocast doing the rest), a reward model and a value model read from the same
checkpoint (``num_labels=1``; with ``--random-init``, or a ``--model`` folder without
``*.safetensors``, all three are built from its config.json with random weights), TRL's defaults
otherwise (temperature 0.7, kl_coef 0.05; TRL 1.12 declares gradient checkpointing but its PPO
loop never switches it on, and coati_hf's default is off to match).

Runs, each in its own process (peak RSS is a per-process high-water mark), alternated
A B C D A B C D ... so drifting machine load hits all of them alike:

- ``trl``: ``trl.experimental.ppo.PPOTrainer`` of TRL 1.12, in ``benchmarks/.venv-trl112``
  (made by ``benchmarks/setup_trl112.sh``: TRL 1.12 with the project's own torch,
  transformers, accelerate, peft and datasets versions), or with ``--trl-python`` (and
  ``--trl-pythonpath``, put before the repository root on its ``PYTHONPATH``) in an
  environment made elsewhere;
- ``coati-same``: ``coati_hf.PPOTrainer`` with the very same arguments (an explicit full
  value model, as TRL requires);
- ``coati-recommended``: ``value_model=None``: the critic is the reward model plus its own
  LoRA adapter and head, four roles on two backbones;
- ``coati-recommended-ckpt``: the same with ``activation_checkpointing=True`` (actor and critic
  recompute their forwards in backward): the memory-bound choice.

Per run: seconds per steady update (after ``--warmup`` updates), split into generation,
reference log-probs, policy log-probs, values, reward scores and the update (forward, backward,
step) by timing the trainers' own functions; generated tokens per second; peak RSS; on a CUDA
device also peak CUDA memory (``torch.cuda.max_memory_allocated``), and every phase clock is read
after ``torch.cuda.synchronize()`` so that phases are not credited with queued kernels. The table
gives medians with the min-max spread over repetitions and the coati_hf / TRL ratios, and is
written with the date, machine and library versions to ``benchmarks/results/`` (or
``--results-dir``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
TRL_PYTHON = HERE / ".venv-trl112" / "bin" / "python"
RUNS = ("trl", "coati-same", "coati-recommended", "coati-recommended-ckpt")
PHASES = ("generate", "policy_logprobs", "reference", "values", "reward", "update")
GIB = 1024**3
RANDOM_INIT_NOTE = "random-initialised weights (shapes as SmolLM2-135M-Instruct; timings depend on shapes, not values)"


# ---------------------------------------------------------------------------------------------
# one run (a child process)
# ---------------------------------------------------------------------------------------------


class PhaseTimer:
    """Wall time spent inside wrapped functions, per phase and per update."""

    def __init__(self):
        import torch

        # CUDA kernels run asynchronously: wait for them before every clock reading
        self.sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
        self.current = defaultdict(float)
        self.per_update: list[dict[str, float]] = []
        self.update_started = None
        self.tokens = 0
        self.update_seconds: list[float] = []
        self.tokens_per_update: list[int] = []

    def wrap(self, phase, function):
        def timed(*args, **kwargs):
            self.sync()
            start = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                self.sync()
                self.current[phase] += time.perf_counter() - start

        return timed

    def begin(self):
        self.current = defaultdict(float)
        self.tokens = 0
        self.sync()
        self.update_started = time.perf_counter()

    def end(self):
        self.sync()
        self.update_seconds.append(time.perf_counter() - self.update_started)
        self.per_update.append(dict(self.current))
        self.tokens_per_update.append(self.tokens)
        self.begin()


# ``--prompts describe``: short one-sentence requests (most answers stop at EOS well before 32 tokens)
DESCRIBE_TOPICS = ("the ocean", "a volcano", "the moon", "a forest", "a city at night", "a thunderstorm", "the desert",
                   "a library", "a mountain", "a river", "the sun", "a garden", "a train station", "the winter",
                   "a bakery", "a lighthouse")  # fmt: skip


def _prompt_messages(prompt_set: str) -> list[list[dict]]:
    """The user turns of the workload: ``shipped`` (the 112 prompts of coati_hf's sample set,
    English and Chinese questions) or ``describe`` (16 x "Describe X in one sentence.")."""
    if prompt_set == "describe":
        return [[{"role": "user", "content": f"Describe {topic} in one sentence."}] for topic in DESCRIBE_TOPICS]
    with open(ROOT / "coati_hf" / "data" / "samples" / "prompts.jsonl", encoding="utf-8") as handle:
        rows = [json.loads(line) for line in handle if line.strip()]
    conversations = []
    for row in rows:
        messages = row.get("messages") or row.get("prompt")
        if isinstance(messages, str):
            messages = [{"role": "user", "content": messages}]
        conversations.append([m for m in messages if m["role"] != "assistant"] or messages)
    return conversations


def _workload(model_dir: str, iterations: int, precision: str = "fp32", prompt_set: str = "shipped"):
    """Tokenizer, pre-tokenized prompts and the shared config values."""
    from datasets import Dataset
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir, padding_side="left")
    if tokenizer.pad_token is None or tokenizer.pad_token_id == tokenizer.eos_token_id:
        tokenizer.pad_token = "<|endoftext|>"  # SmolLM2's unused special token, as coati_hf's loader picks
    prompts = [tokenizer.apply_chat_template(m, tokenize=False, add_generation_prompt=True) for m in _prompt_messages(prompt_set)]
    ids = [tokenizer(text, add_special_tokens=False)["input_ids"] for text in prompts]
    dataset = Dataset.from_dict({"input_ids": ids})
    settings = dict(
        per_device_train_batch_size=8,
        gradient_accumulation_steps=1,
        local_rollout_forward_batch_size=8,
        num_mini_batches=1,
        num_ppo_epochs=1,
        response_length=32,
        stop_token="eos",
        total_episodes=8 * iterations,
        learning_rate=1e-5,
        bf16=precision == "bf16",  # mixed precision: fp32 weights, autocast (as TRL's example)
        fp16=False,
        report_to="none",
        logging_steps=1,
        save_strategy="no",
        num_sample_generations=0,
        seed=0,
        disable_tqdm=True,
    )
    import torch

    if precision == "bf16" and not torch.cuda.is_available():
        settings["use_cpu"] = True  # transformers refuses bf16 without a GPU unless told it is on the CPU
    return tokenizer, dataset, settings


def _models(model_dir: str, full_value_model: bool, random_init: bool = False):
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification

    if random_init:
        # The same seed before each model: one random backbone for all three, as one checkpoint.
        def build(auto_class, **overrides):
            torch.manual_seed(0)
            return auto_class.from_config(AutoConfig.from_pretrained(model_dir, **overrides), dtype=torch.float32)

        policy = build(AutoModelForCausalLM)
        reward = build(AutoModelForSequenceClassification, num_labels=1)
        value = build(AutoModelForSequenceClassification, num_labels=1) if full_value_model else None
    else:
        torch.manual_seed(0)
        policy = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
        reward = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=1, dtype=torch.float32)
        value = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=1, dtype=torch.float32) if full_value_model else None
    for model in (reward, value):
        if model is not None:
            model.config.pad_token_id = 0
    return policy, reward, value


def _lora():
    from peft import LoraConfig

    return LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"], task_type="CAUSAL_LM")


def _step_callback(timer: PhaseTimer):
    from transformers import TrainerCallback

    class StepTimes(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            timer.begin()

        def on_step_end(self, args, state, control, **kwargs):
            timer.end()

    return StepTimes()


def run_trl(model_dir: str, iterations: int, precision: str = "fp32", random_init: bool = False, prompt_set: str = "shipped") -> dict:
    import torch
    import trl.experimental.ppo.ppo_trainer as trl_ppo
    from trl.experimental.ppo import PPOConfig, PPOTrainer

    timer = PhaseTimer()
    tokenizer, dataset, settings = _workload(model_dir, iterations, precision, prompt_set)
    policy, reward, value = _models(model_dir, full_value_model=True, random_init=random_init)
    original_generation = trl_ppo.batch_generation

    def batch_generation(model, queries, *args, **kwargs):
        query_responses, logits = original_generation(model, queries, *args, **kwargs)
        timer.tokens += int(((query_responses[:, queries.shape[1]:] != tokenizer.pad_token_id)).sum())
        return query_responses, logits

    trl_ppo.batch_generation = timer.wrap("generate", batch_generation)
    original_forward = trl_ppo.forward

    def forward(*args, **kwargs):
        # TRL's forward() serves the rollout's reference (no grad) and the update (with grad)
        if torch.is_grad_enabled():
            return original_forward(*args, **kwargs)
        return timer.wrap("reference", original_forward)(*args, **kwargs)

    trl_ppo.forward = forward
    original_get_reward = trl_ppo.get_reward

    def get_reward(model, *args, **kwargs):
        phase = "reward" if model is reward else "values"
        return timer.wrap(phase, original_get_reward)(model, *args, **kwargs)

    trl_ppo.get_reward = get_reward
    trainer = PPOTrainer(
        args=PPOConfig(output_dir=os.environ["BENCH_OUT"], **settings),
        processing_class=tokenizer,
        model=policy,
        ref_model=None,
        reward_model=reward,
        train_dataset=dataset,
        value_model=value,
        peft_config=_lora(),
        callbacks=[_step_callback(timer)],
    )
    trainer.train()
    # TRL's update has no function of its own to time: it is the rest of the iteration
    return _summary(timer, attribute_rest_to="update")


def run_coati(model_dir: str, iterations: int, recommended: bool, checkpointing: bool = False,
              precision: str = "fp32", random_init: bool = False, prompt_set: str = "shipped") -> dict:
    import coati_hf.ppo.experience as experience
    from coati_hf import PPOConfig, PPOTrainer

    timer = PhaseTimer()
    tokenizer, dataset, settings = _workload(model_dir, iterations, precision, prompt_set)
    policy, reward, value = _models(model_dir, full_value_model=not recommended, random_init=random_init)
    original_generate = experience.generate_responses

    def generate_responses(*args, **kwargs):
        responses, valid = original_generate(*args, **kwargs)
        timer.tokens += int(valid.sum())
        return responses, valid

    experience.generate_responses = timer.wrap("generate", generate_responses)
    original_logprobs = experience.forward_logprobs
    in_reference = [False]

    def forward_logprobs(*args, **kwargs):
        phase = "reference" if in_reference[0] else "policy_logprobs"
        return timer.wrap(phase, original_logprobs)(*args, **kwargs)

    experience.forward_logprobs = forward_logprobs
    experience.forward_values = timer.wrap("values", experience.forward_values)
    maker_class = experience.ExperienceMaker
    maker_class._score = timer.wrap("reward", maker_class._score)
    original_reference = maker_class._reference

    def reference(self):
        context = original_reference(self)

        class Flagged:
            def __enter__(self_inner):
                in_reference[0] = True
                return context.__enter__()

            def __exit__(self_inner, *exc):
                in_reference[0] = False
                return context.__exit__(*exc)

        return Flagged()

    maker_class._reference = reference
    PPOTrainer._optimize = timer.wrap("update", PPOTrainer._optimize)
    trainer = PPOTrainer(
        args=PPOConfig(output_dir=os.environ["BENCH_OUT"], activation_checkpointing=checkpointing, **settings),
        processing_class=tokenizer,
        model=policy,
        ref_model=None,
        reward_model=reward,
        train_dataset=dataset,
        value_model=value,
        peft_config=_lora(),
        callbacks=[_step_callback(timer)],
    )
    trainer.train()
    return _summary(timer)


def _summary(timer: PhaseTimer, attribute_rest_to: str | None = None) -> dict:
    import resource

    import torch

    per_update = []
    for seconds, phases in zip(timer.update_seconds, timer.per_update):
        phases = {phase: phases.get(phase, 0.0) for phase in PHASES}
        if attribute_rest_to:  # TRL's update is the rest of the iteration
            phases[attribute_rest_to] = seconds - sum(v for k, v in phases.items() if k != attribute_rest_to)
        phases["other"] = seconds - sum(phases[p] for p in PHASES)
        per_update.append({"seconds": seconds, **phases})
    summary = {
        "per_update": per_update,
        "tokens_per_update": timer.tokens_per_update,
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
    }
    if torch.cuda.is_available():  # reset when the child started
        summary["peak_cuda_bytes"] = torch.cuda.max_memory_allocated()
    return summary


def child(kind: str, model_dir: str, iterations: int, out: str, precision: str = "fp32", random_init: bool = False,
          prompt_set: str = "shipped") -> None:
    import torch

    torch.manual_seed(0)
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    if kind == "trl":
        result = run_trl(model_dir, iterations, precision, random_init, prompt_set)
    else:
        result = run_coati(model_dir, iterations, recommended=kind.startswith("coati-recommended"), checkpointing=kind.endswith("-ckpt"),
                           precision=precision, random_init=random_init, prompt_set=prompt_set)  # fmt: skip
    Path(out).write_text(json.dumps(result))


# ---------------------------------------------------------------------------------------------
# the comparison (parent process)
# ---------------------------------------------------------------------------------------------


def _versions(python, env: dict | None = None) -> dict:
    code = (
        "import json, importlib.metadata as m; print(json.dumps({n: m.version(n) for n in "
        "('torch', 'transformers', 'trl', 'accelerate', 'peft')}))"
    )
    return json.loads(subprocess.run([str(python), "-c", code], capture_output=True, text=True, check=True, env=env).stdout)


def _pythonpath(*front: str | None) -> str:
    """``front`` entries (``:``-separated lists), then the repository root, then nothing else."""
    return os.pathsep.join([part for entry in front if entry for part in entry.split(os.pathsep) if part] + [str(ROOT)])


def _child_env(kind: str, workdir: Path | None, trl_pythonpath: str | None) -> dict:
    """TRL: ``--trl-pythonpath``, then the root; coati_hf: the root, then any PYTHONPATH already set."""
    if kind == "trl":
        pythonpath = _pythonpath(trl_pythonpath)
    else:
        pythonpath = os.pathsep.join([str(ROOT)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])
    env = dict(os.environ, PYTHONPATH=pythonpath, HF_HUB_OFFLINE="1", TRL_EXPERIMENTAL_SILENCE="1", TOKENIZERS_PARALLELISM="false")
    if workdir is not None:
        env["BENCH_OUT"] = str(workdir / kind)
    return env


def _machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in open("/proc/cpuinfo", encoding="utf-8"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    machine = f"{cpu}, {os.cpu_count()} cores, {platform.system()}"
    try:
        import torch

        if torch.cuda.is_available():
            machine += f", {torch.cuda.get_device_name()} (CUDA {torch.version.cuda})"
    except ImportError:
        pass
    return machine


def _run_child(kind: str, model_dir: str, iterations: int, workdir: Path, args: argparse.Namespace) -> dict:
    python = args.trl_python if kind == "trl" else sys.executable
    out = workdir / f"{kind}-{time.time_ns()}.json"
    env = _child_env(kind, workdir, args.trl_pythonpath)
    command = [str(python), str(Path(__file__).resolve()), "--child", kind, "--model", model_dir, "--iterations", str(iterations),
               "--out", str(out), "--precision", args.precision, "--prompts", args.prompts] + (["--random-init"] if args.random_init else [])  # fmt: skip
    proc = subprocess.run(command, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{kind} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return json.loads(out.read_text())


def _fmt_spread(values: list[float], digits: int = 2) -> str:
    median = statistics.median(values)
    if len(values) == 1:
        return f"{median:.{digits}f}"
    return f"{median:.{digits}f} ({min(values):.{digits}f}–{max(values):.{digits}f})"


def table(results: dict[str, list[dict]], warmup: int) -> str:
    """Markdown table of medians over repetitions (each repetition: the mean of its steady updates;
    "first update" and "all updates" are the same callback-to-callback clock without leaving the
    warm-up out, the numbers a harness that times every update sees)."""
    rows = {}
    for kind, reps in results.items():
        summary = defaultdict(list)
        for rep in reps:
            steady = rep["per_update"][warmup:]
            tokens = rep["tokens_per_update"][warmup:]
            for key in ("seconds", *PHASES, "other"):
                summary[key].append(statistics.mean(u[key] for u in steady))
            summary["first"].append(rep["per_update"][0]["seconds"])  # what a user's first callback sees
            summary["all"].append(statistics.mean(u["seconds"] for u in rep["per_update"]))
            summary["tokens_per_s"].append(sum(tokens) / sum(u["generate"] for u in steady))
            summary["rss_gib"].append(rep["peak_rss_bytes"] / GIB)
            if "peak_cuda_bytes" in rep:
                summary["cuda_gib"].append(rep["peak_cuda_bytes"] / GIB)
        rows[kind] = summary
    reference = rows.get("trl")
    # the CUDA columns only where every run measured it (the CPU table keeps its shape)
    cuda = all(len(summary.get("cuda_gib", [])) == len(results[kind]) for kind, summary in rows.items())
    header = "| run | s / update | first update | all updates | generate | policy log-probs | reference | values | reward | update | other | gen tok/s | peak RSS GiB | "
    header += "peak CUDA GiB | speed vs TRL | RSS vs TRL | CUDA vs TRL |" if cuda else "speed vs TRL | RSS vs TRL |"
    lines = [header, "|" + "---|" * header.count(" | ") + "---|"]
    for kind, summary in rows.items():
        median = {key: statistics.median(values) for key, values in summary.items()}
        speed = f"{statistics.median(reference['seconds']) / median['seconds']:.2f}x" if reference else "–"
        memory = f"{median['rss_gib'] / statistics.median(reference['rss_gib']):.2f}x" if reference else "–"
        line = (
            f"| {kind} | {_fmt_spread(summary['seconds'])} | {median['first']:.2f} | {median['all']:.2f} | "
            + " | ".join(f"{median[p]:.2f}" for p in PHASES)
            + f" | {median['other']:.2f} | {median['tokens_per_s']:.0f} | {_fmt_spread(summary['rss_gib'])} | "
        )
        if cuda:
            cuda_ratio = f"{median['cuda_gib'] / statistics.median(reference['cuda_gib']):.2f}x" if reference else "–"
            line += f"{_fmt_spread(summary['cuda_gib'])} | {speed} | {memory} | {cuda_ratio} |"
        else:
            line += f"{speed} | {memory} |"
        lines.append(line)
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--child", choices=RUNS, help=argparse.SUPPRESS)
    parser.add_argument("--model", help="model folder (default: the converted embedded SmolLM2)")
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--repeats", type=int, default=3, help="repetitions of the sequence of runs")
    parser.add_argument("--iterations", type=int, default=4, help="PPO updates per run, warm-up included")
    parser.add_argument("--warmup", type=int, default=1, help="updates left out of the averages")
    parser.add_argument("--runs", nargs="+", default=list(RUNS), choices=RUNS)
    parser.add_argument("--threads", type=int, default=None, help="torch threads per run (default: torch's own)")
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32",
                        help="bf16: bf16=True for both trainers (fp32 weights, autocast)")  # fmt: skip
    parser.add_argument("--prompts", choices=("shipped", "describe"), default="shipped",
                        help="shipped: coati_hf's 112 sample prompts; describe: 16 x 'Describe X in one sentence.'")  # fmt: skip
    parser.add_argument("--random-init", action="store_true",
                        help="build the models from --model's config.json with random weights (the default when it has no *.safetensors)")  # fmt: skip
    parser.add_argument("--trl-python", help="interpreter of an environment with TRL 1.12 (default: benchmarks/.venv-trl112, made by setup_trl112.sh)")
    parser.add_argument("--trl-pythonpath", help="':'-separated folders put before the repository root on the TRL run's PYTHONPATH")
    parser.add_argument("--results-dir", type=Path, default=HERE / "results", help="where the table and JSON go (default: benchmarks/results)")
    args = parser.parse_args()
    if args.threads:
        os.environ["OMP_NUM_THREADS"] = str(args.threads)
    if args.child:
        child(args.child, args.model, args.iterations, args.out, args.precision, args.random_init, args.prompts)
        return
    if args.iterations <= args.warmup:
        parser.error("--iterations must exceed --warmup")
    if "trl" in args.runs and not args.trl_python:
        subprocess.run(["bash", str(HERE / "setup_trl112.sh")], check=True)
    args.trl_python = args.trl_python or str(TRL_PYTHON)
    sys.path.insert(0, str(ROOT))
    from coati_hf.models import embedded_model_dir

    model_dir = args.model or str(embedded_model_dir())
    if not args.random_init and not any(Path(model_dir).glob("*.safetensors")):
        print(f"[bench] no *.safetensors in {model_dir}: random-initialised weights", flush=True)
        args.random_init = True
    versions = {"coati_hf env": _versions(sys.executable)}
    if "trl" in args.runs:
        versions["TRL 1.12 env"] = _versions(args.trl_python, _child_env("trl", None, args.trl_pythonpath))
    stamp, machine = time.strftime("%Y-%m-%d %H:%M"), _machine()
    precision = "fp32" if args.precision == "fp32" else "bf16 (bf16=True: fp32 weights, autocast)"
    weights = f"{RANDOM_INIT_NOTE}; " if args.random_init else ""
    results_dir = args.results_dir
    results_dir.mkdir(parents=True, exist_ok=True)
    name = time.strftime("%Y-%m-%d-%H%M") + "-ppo_vs_trl"

    def write(done: int) -> str:
        """The table of the ``done`` repetitions so far (rewritten after each: a run cut short keeps them)."""
        header = (
            f"PPO, SmolLM2-135M-Instruct, LoRA r=16 q/k/v/o, 8 prompts x 32 new tokens ({args.prompts} prompts), 1 epoch x 1 minibatch, "
            f"{precision}; {weights}"
            f"{done} repetitions x {args.iterations - args.warmup} steady updates (after {args.warmup} warm-up); "
            f"seconds are means per update, medians over repetitions (min–max)\n\n{stamp}; {machine}; "
            + "; ".join(f"{env}: " + ", ".join(f"{k} {v}" for k, v in vers.items()) for env, vers in versions.items())
        )
        report = f"{header}\n\n{table(results, args.warmup)}\n"
        (results_dir / f"{name}.md").write_text(report, encoding="utf-8")
        (results_dir / f"{name}.json").write_text(json.dumps({"header": header, "results": results}, indent=1), encoding="utf-8")
        print(f"[bench] {done}/{args.repeats} repetitions written to {results_dir / name}.md", flush=True)
        return report

    import tempfile

    results: dict[str, list[dict]] = {kind: [] for kind in args.runs}
    with tempfile.TemporaryDirectory() as scratch:
        for repeat in range(args.repeats):
            for kind in args.runs:
                started = time.time()
                results[kind].append(_run_child(kind, model_dir, args.iterations, Path(scratch), args))
                steady = results[kind][-1]["per_update"][args.warmup:]
                print(f"[bench] repeat {repeat + 1}/{args.repeats} {kind}: {statistics.mean(u['seconds'] for u in steady):.2f} s/update "
                      f"({time.time() - started:.0f}s with loading)", flush=True)  # fmt: skip
            report = write(repeat + 1)
    print("\n" + report)

if __name__ == "__main__":
    main()

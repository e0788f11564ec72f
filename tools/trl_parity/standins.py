"""Local stand-ins for the Hub repositories TRL's trainer tests load, built the way TRL builds them.

Nothing is downloaded. TRL's own generator scripts are run from the TRL checkout given on the
command line, with their Hub calls answered locally:

* models: every script under ``scripts/generate_tiny_models/for_causal_lm`` and
  ``.../for_sequence_classification`` is imported as TRL's README says to run it. The reference
  tokenizer it asks for (``AutoTokenizer.from_pretrained(MODEL_ID)``) is the embedded SmolLM2
  tokenizer, given that family's chat template (the copy TRL ships in ``trl/chat_templates``) and
  its special tokens (:data:`FAMILIES`); ``GenerationConfig``/``AutoConfig`` of the reference come
  from that tokenizer and the config class of the family; the checks that read the Hub are
  skipped; ``push_to_hub`` writes the repository into a Hugging Face cache folder
  (``<work>/hub/models--org--name/snapshots/<hash>/``) that ``from_pretrained`` reads offline
  under the same Hub id. Vision-language scripts are not run (no image processor offline).
* datasets: ``scripts/generate_zen_dataset.py``, ``generate_toolcall_dataset.py`` and
  ``generate_harmony_dataset.py`` are run with ``push_to_hub=True``; each pushed config is saved as
  Parquet under ``<work>/datasets/<org>/<name>/<config>/<split>.parquet``, which the pytest plugin
  (:mod:`plugin`) serves to ``datasets.load_dataset``.

Usage (normally through ``run.py``)::

    python tools/trl_parity/standins.py --trl /path/to/trl --work /tmp/trl-parity
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import importlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

MODEL_FOLDERS = ("for_causal_lm", "for_sequence_classification")
DATASET_SCRIPTS = {
    "generate_zen_dataset": "trl-internal-testing/zen",
    "generate_toolcall_dataset": "trl-internal-testing/toolcall",
    "generate_harmony_dataset": "trl-internal-testing/harmony",
}

# Reference model id (as named in TRL's script) -> (config model_type, chat template file in trl/chat_templates
# or None for a tokenizer without one, special tokens). Ids not listed keep SmolLM2's own template and tokens.
QWEN_TOKENS = {"bos_token": None, "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"}
LLAMA3_TOKENS = {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>", "pad_token": None}
FAMILIES: dict[str, tuple[str, str | None, dict]] = {
    "Qwen/Qwen2.5-32B-Instruct": ("qwen2", "qwen2_5.jinja", QWEN_TOKENS),
    "Qwen/Qwen2.5-Coder-0.5B": ("qwen2", "qwen2_5.jinja", QWEN_TOKENS),
    # TRL pins the Qwen3-8B revision whose template carries {% generation %} markers.
    "Qwen/Qwen3-8B": ("qwen3", "qwen3_training.jinja", QWEN_TOKENS),
    "Qwen/Qwen3-4B": ("qwen3", "qwen3.jinja", QWEN_TOKENS),
    "Qwen/Qwen3-30B-A3B": ("qwen3_moe", "qwen3.jinja", QWEN_TOKENS),
    "Qwen/Qwen3-4B-Instruct-2507": ("qwen3", "qwen3_instruct_2507.jinja", QWEN_TOKENS),
    "meta-llama/Llama-3.2-1B-Instruct": ("llama", "llama3_2.jinja", LLAMA3_TOKENS),
    "meta-llama/Llama-3.1-8B-Instruct": ("llama", "llama3_1.jinja", LLAMA3_TOKENS),
    "meta-llama/Meta-Llama-3-8B-Instruct": ("llama", "llama3.jinja", LLAMA3_TOKENS),
    "EleutherAI/pythia-14m": ("gpt_neox", None, {"bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>", "pad_token": None}),
    "openai-community/gpt2": ("gpt2", None, {"bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>", "pad_token": None}),
    "openai/gpt-oss-20b": ("gpt_oss", "gptoss.jinja", {"eos_token": "<|return|>", "pad_token": "<|endoftext|>"}),
    "CohereLabs/aya-expanse-8b": ("cohere", "cohere.jinja", {"eos_token": "<|END_OF_TURN_TOKEN|>", "pad_token": "<|endoftext|>"}),
    "CohereLabs/tiny-aya-earth": ("cohere2", "cohere2.jinja", {"eos_token": "<|END_OF_TURN_TOKEN|>", "pad_token": "<|endoftext|>"}),
    "google/gemma-7b-it": ("gemma", "gemma.jinja", {"bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>"}),
    "google/gemma-2-2b-it": ("gemma2", "gemma.jinja", {"bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>"}),
    "zai-org/GLM-4.5": ("glm4_moe", "glm4moe.jinja", {"eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>"}),
    "LiquidAI/LFM2-1.2B": ("lfm2", "lfm2.jinja", {"eos_token": "<|im_end|>", "pad_token": "<|pad|>"}),
    "LiquidAI/LFM2.5-230M": ("lfm2", "lfm2_2_5.jinja", {"eos_token": "<|im_end|>", "pad_token": "<|pad|>"}),
    "microsoft/Phi-3-mini-4k-instruct": ("phi3", "phi3.jinja", {"eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>"}),
    "microsoft/Phi-3.5-mini-instruct": ("phi3", "phi3_5.jinja", {"eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>"}),
    "deepseek-ai/DeepSeek-R1": ("deepseek_v3", "deepseekv3.jinja", {}),
    "deepseek-ai/DeepSeek-R1-0528": ("deepseek_v3", "deepseekv3.jinja", {}),
    "nvidia/NVIDIA-Nemotron-3-Nano-30B-A3B-BF16": ("nemotron_h", "nemotron_3_nano.jinja", QWEN_TOKENS),
}
# Tokenizer-only repositories the tests name directly (chat_template_path="Qwen/Qwen3-4B").
TOKENIZER_ONLY = ("Qwen/Qwen3-4B",)

SPECIAL_TOKEN = re.compile(r"<\|[A-Za-z0-9_]+\|>|<(?:bos|eos|pad|start_of_turn|end_of_turn)>|\[/?INST\]")


def repo_folder(hub: Path, repo_id: str) -> Path:
    """Create ``models--org--name`` with ``refs/main`` and return its snapshot folder."""
    commit = hashlib.sha1(repo_id.encode()).hexdigest()
    root = hub / ("models--" + repo_id.replace("/", "--"))
    (root / "refs").mkdir(parents=True, exist_ok=True)
    (root / "refs" / "main").write_text(commit)
    snapshot = root / "snapshots" / commit
    if snapshot.exists():
        shutil.rmtree(snapshot)
    snapshot.mkdir(parents=True)
    return snapshot


def standin_tokenizer(reference_id: str, smol_dir: str, load=None):
    """SmolLM2's tokenizer dressed as the reference model's (template + special tokens)."""
    from transformers import AddedToken, AutoTokenizer

    tokenizer = (load or AutoTokenizer.from_pretrained)(smol_dir)
    _, template_file, tokens = FAMILIES.get(reference_id, (None, "", {}))
    if template_file == "":
        return tokenizer  # unknown family: SmolLM2 as is
    template = None
    if template_file is not None:
        import trl

        template = (Path(trl.__file__).parent / "chat_templates" / template_file).read_text()
    tokenizer.chat_template = template
    wanted = set(SPECIAL_TOKEN.findall(template or "")) | {t for t in tokens.values() if t}
    vocab = tokenizer.get_vocab()
    missing = sorted(t for t in wanted if t not in vocab)
    if missing:
        tokenizer.add_tokens([AddedToken(t, special=True, normalized=False) for t in missing], special_tokens=True)
    for name, value in tokens.items():
        setattr(tokenizer, name, value)
    return tokenizer


def _build_model(trl_dir: Path, module: str, hub: Path, smol_dir: str) -> None:
    """Run one of TRL's tiny-model scripts with its Hub calls answered locally (in this process)."""
    import transformers
    from transformers import AutoConfig, AutoTokenizer, GenerationConfig

    sys.path.insert(0, str(trl_dir))
    common = importlib.import_module("scripts.generate_tiny_models._common")
    common.check_transformers_version = lambda *a, **k: None
    common.check_dtype_pattern = lambda *a, **k: None
    common.print_config_diff = lambda *a, **k: None

    def push_to_hub(model, tokenizer, generation_config, prefix=None, suffix=None, create_pr=None):
        name = model.__class__.__name__
        repo_id = f"{common.ORGANIZATION}/{prefix + '-' if prefix else ''}{name}{'-' + suffix if suffix else ''}"
        with tempfile.TemporaryDirectory() as tmp:
            model.save_pretrained(tmp)
            if tokenizer is not None:
                tokenizer.save_pretrained(tmp)
            if generation_config is not None:
                generation_config.save_pretrained(tmp)
            snapshot = repo_folder(hub, repo_id)
            shutil.copytree(tmp, snapshot, dirs_exist_ok=True)
        print(f"built {repo_id}")

    common.push_to_hub = push_to_hub

    tokenizers: dict[str, object] = {}
    load_tokenizer, load_config = AutoTokenizer.from_pretrained, AutoConfig.from_pretrained

    def tokenizer_for(reference_id, *args, **kwargs):
        if reference_id not in tokenizers:
            tokenizers[reference_id] = standin_tokenizer(reference_id, smol_dir, load_tokenizer)
        return copy.deepcopy(tokenizers[reference_id])

    def generation_config_for(reference_id, *args, **kwargs):
        tok = tokenizer_for(reference_id)
        return GenerationConfig(bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)

    def config_for(reference_id, *args, **kwargs):
        if os.path.isdir(reference_id):  # SmolLM2's own folder, read while building its tokenizer
            return load_config(reference_id, *args, **kwargs)
        model_type = FAMILIES.get(reference_id, ("llama",))[0]
        kwargs.pop("revision", None)
        kwargs.setdefault("vocab_size", len(tokenizer_for(reference_id)))
        return AutoConfig.for_model(model_type, **kwargs)

    AutoTokenizer.from_pretrained = tokenizer_for
    transformers.AutoTokenizer.from_pretrained = tokenizer_for
    GenerationConfig.from_pretrained = generation_config_for
    AutoConfig.from_pretrained = config_for
    importlib.import_module(module)


def build_models(trl_dir: Path, hub: Path, smol_dir: str, python: str) -> dict[str, str]:
    """Run every text-model script in its own process; returns ``{script: "ok" | last error line}``."""
    results = {}
    for folder in MODEL_FOLDERS:
        for script in sorted((trl_dir / "scripts" / "generate_tiny_models" / folder).glob("*.py")):
            if script.name == "__init__.py":
                continue
            module = f"scripts.generate_tiny_models.{folder}.{script.stem}"
            proc = subprocess.run(
                [python, __file__, "--trl", str(trl_dir), "--hub", str(hub), "--smol", smol_dir, "--one-model", module],
                capture_output=True,
                text=True,
                timeout=600,
            )
            built = [line for line in proc.stdout.splitlines() if line.startswith("built ")]
            if proc.returncode == 0 and built:
                results[module] = "ok: " + ", ".join(b[6:] for b in built)
            else:
                lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
                results[module] = "failed: " + (lines[-1] if lines else f"exit {proc.returncode}")
    for repo_id in TOKENIZER_ONLY:
        snapshot = repo_folder(hub, repo_id)
        standin_tokenizer(repo_id, smol_dir).save_pretrained(snapshot)
        results[repo_id] = "ok: tokenizer only"
    return results


def build_datasets(trl_dir: Path, out: Path) -> dict[str, str]:
    """Run TRL's dataset scripts with ``push_to_hub`` saving each config as Parquet under ``out``."""
    import datasets

    def save(self, repo_id, config_name="default", **kwargs):
        parts = self.items() if isinstance(self, datasets.DatasetDict) else [("train", self)]
        for split, dataset in parts:
            target = out / repo_id / config_name / f"{split}.parquet"
            target.parent.mkdir(parents=True, exist_ok=True)
            dataset.to_parquet(str(target))

    datasets.DatasetDict.push_to_hub = save
    datasets.Dataset.push_to_hub = save
    sys.path.insert(0, str(trl_dir / "scripts"))
    results = {}
    for name, repo_id in DATASET_SCRIPTS.items():
        try:
            importlib.import_module(name).main(0.1, True, repo_id)
            results[repo_id] = "ok: " + ", ".join(sorted(p.name for p in (out / repo_id).iterdir()))
        except Exception as err:  # a script needing something offline lacks: reported, not fatal
            results[repo_id] = f"failed: {type(err).__name__}: {err}"
    return results


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trl", required=True, type=Path, help="a checkout of https://github.com/huggingface/trl")
    parser.add_argument("--work", type=Path, help="output folder (hub/ and datasets/ are written inside)")
    parser.add_argument("--hub", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--smol", help=argparse.SUPPRESS)
    parser.add_argument("--one-model", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one_model:
        _build_model(args.trl.resolve(), args.one_model, args.hub, args.smol)
        return
    from coati_hf.models import embedded_model_dir

    work = args.work.resolve()
    smol_dir = str(embedded_model_dir())
    report = {
        "models": build_models(args.trl.resolve(), work / "hub", smol_dir, sys.executable),
        "datasets": build_datasets(args.trl.resolve(), work / "datasets"),
    }
    (work / "standins.json").write_text(json.dumps(report, indent=2))
    for kind, entries in report.items():
        for name, status in entries.items():
            print(f"{kind:8s} {name}: {status}")


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()

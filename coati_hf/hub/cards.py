"""Model cards: the templates in ``model_cards/``, rendered with ``huggingface_hub.ModelCard``.

One template per kind of export (:data:`TEMPLATES`). The YAML header is a
``huggingface_hub.ModelCardData`` (the fields the Hub reads: ``base_model``,
``base_model_relation``, ``datasets``, ``language``, ``library_name``, ``pipeline_tag``,
``license``, ``tags``, ``model-index``) plus coati_hf's own block (``coati_hf``: stage, the
reference the load snippet uses, the adapter's base, the lineage). The templates hold the
stage-specific prose and load snippets; the shared parts are rendered here.

Three sections are *derived from the YAML*, so that the body and the header never disagree:
the opening paragraph (:func:`intro_text`, "This model is a fine-tuned version of [base](link)
on [data]", as TRL's cards open), the lineage (:func:`lineage_text`) and the held-out results
(:func:`coati_hf.hub.results.results_text`). Each sits between ``<!-- coati_hf:NAME -->`` and
``<!-- /coati_hf:NAME -->`` lines (invisible on the Hub) and :func:`refresh_card` rewrites them
from the YAML whenever it changes: a push (:func:`retarget_card`) or held-out results added
later (:func:`coati_hf.hub.results.add_evaluation_results`).

Where the templates live: inside the installed package (``coati_hf/model_cards``, mapped from
the top-level folder by ``pyproject.toml``) or, in a source checkout, in ``<repo>/model_cards``.

Every load snippet names the model once, on a line ``model_id = "…"`` (the export's folder name,
the snippet running from the folder that contains it, or its Hub repo), and an adapter's base on
a line ``base_id = "…"``; :func:`retarget_card` rewrites both when an export is pushed.
"""

from __future__ import annotations

import math
import re
from importlib import metadata
from pathlib import Path

from .origin import CARD_KEY, is_hub_id, nearest_hub_id

TEMPLATES = {
    "sft": "sft.md",
    "reward-model": "reward_model.md",
    "ppo": "ppo_actor.md",
    "ppo-critic": "ppo_critic.md",
}
PIPELINE_TAGS = {"sft": "text-generation", "reward-model": "text-classification", "ppo": "text-generation", "ppo-critic": "text-classification"}
LIBRARY_VERSIONS = ("coati_hf", "transformers", "trl", "peft", "accelerate", "torch", "datasets", "huggingface_hub", "colossalai")
MAX_TABLE_ROWS = 12
_MODEL_ID_LINE = re.compile(r'^(model_id = )"([^"\n]*)"', re.MULTILINE)
_BASE_ID_LINE = re.compile(r'^(base_id = )"([^"\n]*)"', re.MULTILINE)

CITATIONS = r"""```bibtex
@misc{ColossalChat,
  title        = {{ColossalChat: An Open-Source Solution for Cloning ChatGPT With a Complete RLHF Pipeline}},
  author       = {{HPC-AI Tech}},
  year         = {2023},
  howpublished = {\url{https://github.com/hpcaitech/ColossalAI/tree/main/applications/ColossalChat}}
}

@inproceedings{ouyang2022training,
  title     = {{Training language models to follow instructions with human feedback}},
  author    = {Ouyang, Long and Wu, Jeff and Jiang, Xu and Almeida, Diogo and Wainwright, Carroll L. and Mishkin, Pamela and Zhang, Chong and Agarwal, Sandhini and Slama, Katarina and Ray, Alex and Schulman, John and Hilton, Jacob and Kelton, Fraser and Miller, Luke and Simens, Maddie and Askell, Amanda and Welinder, Peter and Christiano, Paul F. and Leike, Jan and Lowe, Ryan},
  booktitle = {Advances in Neural Information Processing Systems},
  volume    = {35},
  year      = {2022}
}

@article{schulman2017proximal,
  title   = {{Proximal Policy Optimization Algorithms}},
  author  = {Schulman, John and Wolski, Filip and Dhariwal, Prafulla and Radford, Alec and Klimov, Oleg},
  journal = {arXiv preprint arXiv:1707.06347},
  year    = {2017}
}

@software{vonwerra2020trl,
  title   = {{TRL: Transformers Reinforcement Learning}},
  author  = {von Werra, Leandro and Belkada, Younes and Tunstall, Lewis and Beeching, Edward and Thrush, Tristan and Lambert, Nathan and Huang, Shengyi and Rasul, Kashif and Gallou{\'e}dec, Quentin},
  license = {Apache-2.0},
  url     = {https://github.com/huggingface/trl},
  year    = {2020}
}
```"""


def templates_dir() -> Path:
    """The folder holding the card templates (installed package first, then the source tree)."""
    package = Path(__file__).resolve().parent.parent
    for candidate in (package / "model_cards", package.parent / "model_cards"):
        if (candidate / TEMPLATES["sft"]).is_file():
            return candidate
    raise FileNotFoundError(
        f"coati_hf's model-card templates are missing (looked in {package / 'model_cards'} and "
        f"{package.parent / 'model_cards'}); reinstall coati_hf"
    )


def library_versions() -> dict[str, str]:
    """Installed versions of the libraries that shaped the export."""
    versions = {}
    for name in LIBRARY_VERSIONS:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            if name == "coati_hf":
                import coati_hf

                versions[name] = coati_hf.__version__
    return versions


# ---------------------------------------------------------------------------------------------
# Markdown
# ---------------------------------------------------------------------------------------------


def _cell(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}" if math.isfinite(value) else str(value)
    if isinstance(value, (list, tuple, set)):
        return ", ".join(str(item) for item in (sorted(value) if isinstance(value, set) else value))
    return str(value).replace("|", "\\|").replace("\n", " ")


def markdown_table(header: list[str], rows: list[list]) -> str:
    """A GitHub-flavoured Markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(":---" for _ in header) + "|"]
    lines += ["| " + " | ".join(_cell(value) for value in row) + " |" for row in rows]
    return "\n".join(lines)


def key_value_table(values: dict, header=("Name", "Value")) -> str:
    return markdown_table(list(header), [[key, value] for key, value in values.items()])


def sample_rows(entries: list[dict], limit: int = MAX_TABLE_ROWS) -> list[dict]:
    """At most ``limit`` entries, evenly spread, always the first and the last."""
    if len(entries) <= limit:
        return entries
    picks = sorted({round(i * (len(entries) - 1) / (limit - 1)) for i in range(limit)})
    return [entries[i] for i in picks]


def log_table(log_history: list[dict], columns: dict[str, str], step_header: str = "Step") -> str | None:
    """Rows of the logged training steps that carry any of ``columns`` (log key → header)."""
    entries = [e for e in log_history if "step" in e and any(key in e for key in columns)]
    if not entries:
        return None
    present = {key: header for key, header in columns.items() if any(key in e for e in entries)}
    rows = [[e["step"], *(e.get(key, "") for key in present)] for e in sample_rows(entries)]
    return markdown_table([step_header, *present.values()], rows)


def plots_markdown(plots: list[dict]) -> str:
    if not plots:
        return "No training steps were logged, so there are no curves to show."
    return "\n\n".join(f"![{plot['title']}]({plot['file']})" for plot in plots)


# ---------------------------------------------------------------------------------------------
# sections derived from the YAML
# ---------------------------------------------------------------------------------------------


def model_link(entry: dict | None) -> str:
    """A model as the body names it: a link to its Hub page, or its local folder's name."""
    if not entry or not entry.get("name"):
        return "a model whose origin was not recorded"
    name = entry["name"]
    return f"[{name}](https://huggingface.co/{name})" if entry.get("on_hub") else f"`{name}` (local folder, not on the Hub)"


def dataset_phrase(datasets: list[str]) -> str:
    """Training data as the body names it: Hub datasets linked, local data described."""
    parts = []
    for name in datasets:
        if is_hub_id(name) and "/" in name:
            parts.append(f"the [{name}](https://huggingface.co/datasets/{name}) dataset")
        else:
            parts.append(name)
    return " and ".join(parts)


def card_block(data: dict) -> dict:
    """The card's own ``coati_hf`` YAML block (empty for another card)."""
    block = data.get(CARD_KEY)
    return block if isinstance(block, dict) else {}


def _parent(lineage: list[dict]) -> str:
    """The model a stage started from, and where its chain starts when it is a local folder."""
    if len(lineage) < 2:
        return model_link(None)
    parent = lineage[-2]
    root = nearest_hub_id(lineage[:-2])
    if parent.get("on_hub") or not root:
        return model_link(parent)
    return f"`{parent['name']}` (local folder, not on the Hub, fine-tuned from [{root}](https://huggingface.co/{root}))"


def reward_phrase(reward: dict | None) -> str:
    if not reward:
        return "a reward model given in memory (its origin was not recorded)"
    if reward.get("function"):
        return f"the Python function `{reward['function']}`"
    return f"the reward model {model_link(reward)}"


def intro_text(data: dict) -> str:
    """The card's opening paragraph (TRL's: base model, then data)."""
    block = card_block(data)
    lineage, stage = block.get("lineage", []), block.get("stage")
    datasets = data.get("datasets") or []
    datasets = [datasets] if isinstance(datasets, str) else datasets
    text = f"This model is a fine-tuned version of {_parent(lineage)}"
    if datasets:
        text += f" on {dataset_phrase(datasets)}"
    if stage == "ppo":
        text += f", optimised with PPO against {reward_phrase(lineage[-1].get('reward') if lineage else None)}"
    elif stage == "ppo-critic":
        text += ", trained as the value model (critic) of the PPO policy whose card is [one folder up](../README.md)"
    trained_with = "[coati_hf](https://pypi.org/project/coati_hf), on [TRL](https://github.com/huggingface/trl)'s interfaces"
    return f"{text}. It has been trained with {trained_with}."


def lineage_text(data: dict) -> str:
    """The lineage table (oldest first) and, for PPO, the reward the policy was optimised against."""
    lineage = card_block(data).get("lineage", [])
    rows = [[index, step["stage"], model_link(step), step.get("settings") or ""] for index, step in enumerate(lineage, start=1)]
    text = markdown_table(["#", "Stage", "Model", "Key settings"], rows)
    reward = lineage[-1].get("reward") if lineage and lineage[-1].get("stage") == "ppo" else None
    if reward is not None:
        text += (f"\n\nReward during PPO: {reward_phrase(reward)}. It scored the policy's answers; it is not a step of the "
                 "policy's own chain (its card has its lineage).")  # fmt: skip
    return text


def section(name: str, text: str) -> str:
    """``text`` between the markers :func:`refresh_card` finds again."""
    return f"<!-- coati_hf:{name} -->\n{text}\n<!-- /coati_hf:{name} -->"


def _replace_section(body: str, name: str, text: str) -> str:
    pattern = re.compile(rf"<!-- coati_hf:{name} -->\n.*?\n<!-- /coati_hf:{name} -->", re.DOTALL)
    return pattern.sub(lambda _: section(name, text), body, count=1)


def derived_sections(data: dict) -> dict[str, str]:
    """``{name: marked text}`` of every section derived from the YAML ``data``."""
    from .results import results_text

    texts = {"intro": intro_text(data), "lineage": lineage_text(data), "results": results_text(data)}
    return {name: section(name, text) for name, text in texts.items()}


def refresh_card(card) -> None:
    """Rewrite the card's derived sections from its YAML (see the module docstring)."""
    data = card.data.to_dict()
    for name, marked in derived_sections(data).items():
        card.text = _replace_section(card.text, name, marked.split("\n", 1)[1].rsplit("\n", 1)[0])


def render_card(kind: str, card_data, **context):
    """``ModelCard`` from the template of ``kind`` (a key of :data:`TEMPLATES`)."""
    from huggingface_hub import ModelCard

    template = templates_dir() / TEMPLATES[kind]
    sections = {f"{name}_section": text for name, text in derived_sections(card_data.to_dict()).items()}
    return ModelCard.from_template(card_data, template_path=str(template), citations=CITATIONS, **sections, **context)


# ---------------------------------------------------------------------------------------------
# pointing a card at the Hub
# ---------------------------------------------------------------------------------------------


def _on_hub(entry: dict | None, hub_ids: dict[str, str]) -> bool:
    """Point a lineage step or reference at its Hub repo where one is known; True if it changed."""
    if not entry or entry.get("on_hub") or not entry.get("name"):
        return False
    hub_id = hub_ids.get(entry["name"]) or entry.get("hub_id")
    if not hub_id:
        return False
    entry.pop("hub_id", None)
    entry.update(name=hub_id, on_hub=True)
    return True


def local_references(card) -> set[str]:
    """Names of local folders the card refers to (lineage steps, PPO's reward, the adapter's base)."""
    block = card_block(card.data.to_dict())
    lineage = block.get("lineage", [])
    entries = [*lineage[:-1], (lineage[-1].get("reward") if lineage else None), block.get("adapter_base")]
    return {entry["name"] for entry in entries if entry and entry.get("name") and not entry.get("on_hub")}


def retarget_card(card, reference: str, hub_ids: dict[str, str] | None = None) -> bool:
    """Make a coati_hf card name ``reference`` (its Hub repo) as the model itself, and the Hub
    repos of ``hub_ids`` (local folder name → Hub id) wherever it named those folders: load
    snippets, adapter base, lineage, ``base_model``, ``model-index``. False when nothing changed."""
    hub_ids = hub_ids or {}
    block = {key: value for key, value in card_block(card.data.to_dict()).items()}
    if not block:
        return False
    old = block.get("reference")
    changed = bool(old) and old != reference
    if changed:
        card.text = _MODEL_ID_LINE.sub(lambda m: f'{m.group(1)}"{reference}"' if m.group(2) == old else m.group(0), card.text)
        block["reference"] = reference
    lineage = [dict(step) for step in block.get("lineage", [])]
    if lineage and changed:
        lineage[-1].update(name=reference, on_hub=True)
    for step in lineage[:-1]:
        changed |= _on_hub(step, hub_ids)
    if lineage and lineage[-1].get("reward"):
        lineage[-1]["reward"] = dict(lineage[-1]["reward"])
        changed |= _on_hub(lineage[-1]["reward"], hub_ids)
    block["lineage"] = lineage
    adapter_base = dict(block["adapter_base"]) if block.get("adapter_base") else None
    if adapter_base and _on_hub(adapter_base, hub_ids):
        old_base = block["adapter_base"]["name"]
        card.text = _BASE_ID_LINE.sub(lambda m: f'{m.group(1)}"{adapter_base["name"]}"' if m.group(2) == old_base else m.group(0), card.text)
        block["adapter_base"] = adapter_base
        changed = True
    if not changed:
        return False
    setattr(card.data, CARD_KEY, block)
    base = nearest_hub_id(lineage[:-1])
    if base:
        card.data.base_model = base
    if getattr(card.data, "eval_results", None):
        card.data.model_name = reference
    refresh_card(card)
    return True

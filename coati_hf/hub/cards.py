"""Model cards: the templates in ``model_cards/``, rendered with ``huggingface_hub.ModelCard``.

One template per kind of export (:data:`TEMPLATES`). The YAML header is a
``huggingface_hub.ModelCardData`` (the fields the Hub reads: ``base_model``,
``base_model_relation``, ``datasets``, ``library_name``, ``pipeline_tag``, ``license``,
``tags``, ``model-index``) plus coati_hf's own block (``coati_hf``: stage, the reference the
load snippet uses, the lineage). The body's shared tables (lineage, hyper-parameters, results,
library versions, plots) are rendered here once as Markdown and handed to the templates, which
hold the stage-specific prose and load snippet.

Where the templates live: inside the installed package (``coati_hf/model_cards``, mapped from
the top-level folder by ``pyproject.toml``) or, in a source checkout, in ``<repo>/model_cards``.

Every load snippet names the model once, on a line ``model_id = "…"``: the export's folder
name (the snippet runs from the folder that contains the export) or its Hub repo.
:func:`retarget_card` rewrites that line, and the card's own name, when an export is pushed to
a repo.
"""

from __future__ import annotations

import math
import re
from importlib import metadata
from pathlib import Path

from .origin import CARD_KEY

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


def lineage_table(lineage: list[dict]) -> str:
    rows = []
    for index, step in enumerate(lineage, start=1):
        name = f"[{step['name']}](https://huggingface.co/{step['name']})" if step.get("on_hub") else f"`{step['name']}` (local folder)"
        rows.append([index, step["stage"], name, step.get("settings") or ""])
    return markdown_table(["#", "Stage", "Model", "Key settings"], rows)


def sample_rows(entries: list[dict], limit: int = MAX_TABLE_ROWS) -> list[dict]:
    """At most ``limit`` entries, evenly spread, always the first and the last."""
    if len(entries) <= limit:
        return entries
    picks = sorted({round(i * (len(entries) - 1) / (limit - 1)) for i in range(limit)})
    return [entries[i] for i in picks]


def log_table(log_history: list[dict], columns: dict[str, str]) -> str | None:
    """Rows of the logged training steps that carry any of ``columns`` (log key → header)."""
    entries = [e for e in log_history if "step" in e and any(key in e for key in columns)]
    if not entries:
        return None
    present = {key: header for key, header in columns.items() if any(key in e for e in entries)}
    rows = [[e["step"], *(e.get(key, "") for key in present)] for e in sample_rows(entries)]
    return markdown_table(["Step", *present.values()], rows)


def plots_markdown(plots: list[dict]) -> str:
    if not plots:
        return "No training steps were logged, so there are no curves to show."
    return "\n\n".join(f"![{plot['title']}]({plot['file']})" for plot in plots)


def render_card(kind: str, card_data, **context):
    """``ModelCard`` from the template of ``kind`` (a key of :data:`TEMPLATES`)."""
    from huggingface_hub import ModelCard

    template = templates_dir() / TEMPLATES[kind]
    return ModelCard.from_template(card_data, template_path=str(template), **context)


def retarget_card(card, reference: str) -> bool:
    """Make a coati_hf card name ``reference`` (a Hub repo id) in its load snippet, its
    ``model-index`` and the last step of its lineage. False when it already does."""
    block = dict(card.data.to_dict().get(CARD_KEY) or {})
    old = block.get("reference")
    if not old or old == reference:
        return False
    card.text = _MODEL_ID_LINE.sub(lambda m: f'{m.group(1)}"{reference}"' if m.group(2) == old else m.group(0), card.text)
    block["reference"] = reference
    lineage = [dict(step) for step in block.get("lineage", [])]
    if lineage:
        lineage[-1].update(name=reference, on_hub=True)
    block["lineage"] = lineage
    setattr(card.data, CARD_KEY, block)
    if getattr(card.data, "model_name", None):
        card.data.model_name = reference
    return True

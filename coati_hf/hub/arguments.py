"""Config fields every coati_hf trainer gets for its exports (through ``CoatiArgumentsMixin``)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class HubExportArguments:
    """How ``save_model`` writes the export and what its model card says.

    The card's other facts are read from the run; these fields cover what a run cannot know.
    """

    save_adapter_only: bool = field(
        default=False,
        metadata={
            "help": "For a LoRA model, export only the adapter (at the folder's root, as PEFT repos have it) instead "
            "of the default: the merged full weights at the root plus the adapter in adapter/."
        },
    )
    card_base_model: str | None = field(
        default=None,
        metadata={
            "help": "Hub id of the model training started from, for the card's base_model and the adapter config, "
            "when it cannot be read from the model (a random-init model, or a local folder without a coati_hf card)."
        },
    )
    card_datasets: list[str] | None = field(
        default=None,
        metadata={
            "help": "Hub ids of the training datasets, or a description of local files, for the card. Default: what "
            "the train dataset records about its source."
        },
    )
    card_license: str | None = field(
        default=None,
        metadata={"help": "Licence id for the card. Default: the base model's licence (from its card), else 'unknown'."},
    )

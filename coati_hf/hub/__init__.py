"""Hub-ready exports of every stage: one save format, model cards, atomic writes, pushes.

- :mod:`.export`: the folder layout (full weights + ``adapter/``, or adapter only), manifest,
  no local paths; :func:`save_for_hub` for a bare model.
- :mod:`.stages`: a trainer's export (weights, card, plots) for SFT, reward model and PPO.
- :mod:`.cards`, :mod:`.plots`, :mod:`.origin`: the card templates in ``model_cards/``, the
  training curves, and how a model's origin and lineage are named.
- :mod:`.facts`, :mod:`.results`, :mod:`.language`: what a card states about the run (settings
  and counts), its held-out results and training statistics, the data's languages;
  :func:`add_evaluation_results` adds held-out results to an export's card afterwards.
- :mod:`.atomic`: replace a folder in one step (:func:`atomic_directory`), for exports and
  checkpoints alike.
- :mod:`.trainer_mixin`: ``save_model`` / ``push_to_hub`` / atomic checkpoints for trainers.
- :mod:`.push`: one-commit pushes of an export (``coati-hf push FOLDER REPO_ID``).
"""

from coati_hf._lazy import install_lazy_attributes

_LAZY_ATTRS = {
    "save_for_hub": "coati_hf.hub.export",
    "merged_copy": "coati_hf.hub.export",
    "save_weights": "coati_hf.hub.export",
    "check_export": "coati_hf.hub.export",
    "adapter_folder": "coati_hf.hub.export",
    "read_manifest": "coati_hf.hub.export",
    "ExportError": "coati_hf.hub.export",
    "atomic_directory": "coati_hf.hub.atomic",
    "replace_directory": "coati_hf.hub.atomic",
    "staging_area": "coati_hf.hub.atomic",
    "export_trainer_model": "coati_hf.hub.stages",
    "export_ppo": "coati_hf.hub.stages",
    "add_evaluation_results": "coati_hf.hub.results",
    "push_export": "coati_hf.hub.push",
    "PushError": "coati_hf.hub.push",
    "HubExportMixin": "coati_hf.hub.trainer_mixin",
    "AtomicCheckpointMixin": "coati_hf.hub.trainer_mixin",
    "HubExportArguments": "coati_hf.hub.arguments",
}

install_lazy_attributes(globals(), _LAZY_ATTRS)

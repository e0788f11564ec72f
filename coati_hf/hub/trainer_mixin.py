"""Trainer mixins: Hub exports from ``save_model``, pushes of them, and atomic checkpoints.

Put them after :class:`~coati_hf.colossalai.ColossalAIMixin` and before the TRL trainer in the
bases, so ColossalAI's gather runs first and these decide what is written::

    class SFTTrainer(ColossalAIMixin, HubExportMixin, AtomicCheckpointMixin, trl.SFTTrainer): ...

:class:`HubExportMixin`

- ``save_model(dir)`` writes the export of :mod:`coati_hf.hub.stages` (weights in the layout of
  :mod:`coati_hf.hub.export`, card, plots, manifest) on the process(es) that save, in one
  atomic step. Inside a checkpoint (see below) the model is written the Trainer's own way
  instead, so ``resume_from_checkpoint`` and ``load_best_model_at_end`` read it as usual.
- ``push_to_hub(...)`` saves the export to ``args.output_dir`` and pushes that folder in one
  commit (:func:`coati_hf.hub.push.push_export`); ``save_model`` with ``args.push_to_hub``
  pushes the folder it just wrote. Keyword arguments (``dataset_name``, ``tags``, ``license``)
  go into the card, as with TRL.
- ``create_model_card(...)`` records those card options for the next export and writes
  nothing: a card is only ever written together with the weights it describes.

:class:`AtomicCheckpointMixin`

- Every ``checkpoint-N`` the Trainer writes (weights, optimizer, scheduler, RNG, trainer state
  and whatever a subclass adds inside :meth:`~AtomicCheckpointMixin.atomic_checkpoint`) is
  written under ``<run_dir>/.checkpoint-N.staging-shared/checkpoint-N`` and renamed into place
  once complete: a ``checkpoint-N`` folder that exists is complete, so
  ``resume_from_checkpoint=True`` / ``get_last_checkpoint`` never pick a partial one.
"""

from __future__ import annotations

import logging
import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from .atomic import remove_leftovers, replace_directory

logger = logging.getLogger(__name__)

SHARED_STAGING_SUFFIX = ".staging-shared"
CARD_OPTIONS = ("dataset_name", "dataset", "tags", "license", "language", "eval_dataset_name", "eval_results")
# transformers' create_model_card options that the card reads from the run instead (base model, task)
READ_ELSEWHERE = {"model_name", "finetuned_from", "tasks", "dataset_tags", "dataset_args"}


def coati_stage(trainer) -> str:
    """The stage a trainer trains, from its ``coati-<stage>`` model-card tag."""
    for tag in getattr(trainer, "_tag_names", ()):
        if tag.startswith("coati-"):
            return tag[len("coati-") :]
    raise ValueError(f"{type(trainer).__name__} has no 'coati-<stage>' tag in _tag_names")


class HubExportMixin:
    """Exports, pushes and card options for a coati_hf trainer (see the module docstring)."""

    def create_model_card(self, model_name: str | None = None, dataset_name=None, tags=None, **kwargs) -> None:
        """Record card options for the next export: ``dataset_name``, ``tags``, ``license``,
        ``language`` (default: detected in the training data), ``eval_dataset_name`` (which
        held-out rows the eval split is, e.g. "rows 96-111 of prompts.jsonl") and
        ``eval_results``: held-out results measured elsewhere (``huggingface_hub.EvalResult`` s,
        e.g. from ``coati-hf eval``) for the card's ``model-index``.

        Unlike TRL's, this writes no README: the card is written by ``save_model``, with the
        weights it describes, in the same atomic step. An export already written takes held-out
        results with :func:`coati_hf.hub.add_evaluation_results`.
        """
        from .results import check_results

        unknown = set(kwargs) - set(CARD_OPTIONS) - READ_ELSEWHERE
        if unknown:
            raise TypeError(f"create_model_card() got unexpected options {sorted(unknown)}; it takes {', '.join(CARD_OPTIONS)}")
        options = dict(getattr(self, "_coati_card_options", {}))
        given = {"dataset_name": dataset_name or kwargs.get("dataset") or kwargs.get("dataset_tags"), "tags": tags}
        given.update({key: kwargs.get(key) for key in ("license", "language", "eval_dataset_name", "eval_results")})
        for key, value in given.items():
            if value:
                if key == "eval_results":
                    value = check_results(value)
                options[key] = [value] if key in ("tags", "language") and isinstance(value, str) else value
        self._coati_card_options = options

    def _save(self, output_dir: str | None = None, state_dict=None) -> None:
        if getattr(self, "_coati_checkpoint_area", None) is not None:
            return super()._save(output_dir, state_dict=state_dict)  # checkpoints keep the Trainer's format
        if getattr(self, "is_distributed_loading_by_transformers", False):
            logger.warning("A model sharded at load time (tp_plan) is saved the Trainer's way, without a coati_hf card.")
            return super()._save(output_dir, state_dict=state_dict)
        if not self.args.should_save:
            return
        from .stages import export_trainer_model

        model = self.accelerator.unwrap_model(self.model, keep_torch_compile=False)
        export_trainer_model(self, model, output_dir or self.args.output_dir, stage=coati_stage(self), state_dict=state_dict)

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """Write the export to ``output_dir`` (default ``args.output_dir``); push it when
        ``args.push_to_hub`` and called by the user."""
        super().save_model(output_dir, _internal_call=True)
        if self.args.push_to_hub and not _internal_call:
            self.push_export(output_dir or self.args.output_dir, commit_message="Model save")

    def push_to_hub(
        self,
        commit_message: str | None = "End of training",
        blocking: bool = True,
        token: str | None = None,
        revision: str | None = None,
        private: bool | None = None,
        **kwargs,
    ):
        """Save the export to ``args.output_dir`` and push it in one commit to
        ``args.hub_model_id`` (default: the folder's name under the token's namespace)."""
        self.callback_handler.on_push_begin(self.args, self.state, self.control)
        self.create_model_card(**kwargs)
        self.save_model(self.args.output_dir, _internal_call=True)
        return self.push_export(
            self.args.output_dir, commit_message=commit_message, blocking=blocking, token=token, revision=revision, private=private
        )

    def push_export(self, folder, *, commit_message=None, blocking=True, token=None, revision=None, private=None):
        """Push an export folder with this trainer's Hub settings (world process zero only)."""
        if not self.is_world_process_zero():
            return None
        from .push import push_export

        repo_id = getattr(self, "hub_model_id", None) or self.args.hub_model_id or Path(os.path.abspath(folder)).name
        result = push_export(
            folder,
            repo_id,
            token=token if token is not None else self.args.hub_token,
            private=private if private is not None else self.args.hub_private_repo,
            revision=revision if revision is not None else self.args.hub_revision,
            commit_message=commit_message,
            blocking=blocking,
        )
        return result


class AtomicCheckpointMixin:
    """``checkpoint-N`` folders appear complete or not at all (see the module docstring)."""

    _coati_checkpoint_area: str | None = None

    def _get_output_dir(self, trial) -> str:
        if self._coati_checkpoint_area is not None:
            return self._coati_checkpoint_area
        return super()._get_output_dir(trial)

    def _push_from_checkpoint(self, checkpoint_folder: str) -> None:
        if self._coati_checkpoint_area is not None:
            self._coati_deferred_pushes.append(checkpoint_folder)  # pushed from its final place
            return
        super()._push_from_checkpoint(checkpoint_folder)

    def _save_checkpoint(self, model, trial) -> None:
        with self.atomic_checkpoint(trial):
            super()._save_checkpoint(model, trial)

    @contextmanager
    def atomic_checkpoint(self, trial=None) -> Iterator[Path]:
        """Redirect the Trainer's checkpoint writes of this step to a staging folder and publish it.

        Yields the staged ``checkpoint-N`` folder: whatever is written there (by the Trainer's
        ``_save_checkpoint`` or by the caller) appears at ``<run_dir>/checkpoint-N`` together, on
        a normal exit. Nested use yields the same folder. Every rank must enter it (it holds
        barriers); the ranks that save (``args.should_save``) publish. A trainer that adds files
        to its checkpoints writes them inside the block::

            def _save_checkpoint(self, model, trial):
                with self.atomic_checkpoint(trial) as checkpoint:
                    super()._save_checkpoint(model, trial)  # the Trainer writes into `checkpoint`
                    if self.args.should_save:
                        (checkpoint / "extra_state.json").write_text(...)
        """
        from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

        name = f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        if self._coati_checkpoint_area is not None:
            yield Path(self._coati_checkpoint_area) / name
            return
        run_dir = Path(os.path.abspath(super()._get_output_dir(trial)))
        final = run_dir / name
        area = run_dir / f".{name}{SHARED_STAGING_SUFFIX}"
        writer = self.args.should_save
        if writer:
            remove_leftovers(final)
            shutil.rmtree(area, ignore_errors=True)
            area.mkdir(parents=True)
        self.accelerator.wait_for_everyone()
        self._coati_checkpoint_area, self._coati_deferred_pushes = str(area), []
        try:
            yield area / name
            self.accelerator.wait_for_everyone()
            if writer:
                self._publish_checkpoint(area / name, final)
        finally:
            self._coati_checkpoint_area = None
            if writer:
                shutil.rmtree(area, ignore_errors=True)
        for _ in self._coati_deferred_pushes:
            super()._push_from_checkpoint(str(final))
        if writer:
            self._rotate_after_publish(run_dir)

    def _publish_checkpoint(self, staged: Path, final: Path) -> None:
        best = self.state.best_model_checkpoint
        if best and best.startswith(str(staged.parent)):
            self.state.best_model_checkpoint = str(final.parent / Path(best).name)
            state_file = staged / "trainer_state.json"
            if state_file.is_file():
                self.state.save_to_json(str(state_file))
        replace_directory(staged, final)

    def _rotate_after_publish(self, run_dir: Path) -> None:
        """The Trainer rotated checkpoints in the staging folder (where there was one); do it
        where they are, with the same rule."""
        from transformers.trainer_utils import rotate_checkpoints

        rotate_checkpoints(
            output_dir=str(run_dir),
            save_total_limit=self.args.save_total_limit,
            best_model_checkpoint=self.state.best_model_checkpoint,
            use_mtime=True,
        )

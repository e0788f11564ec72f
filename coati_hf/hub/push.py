"""Push a local export to a Hub repo in one commit.

Rules:

- What is pushed is the export as it is on disk: exactly the files its manifest lists
  (weights, tokenizer, card, plots and, for PPO, ``critic/``), nothing else from the folder
  (a trainer's ``checkpoint-*`` folders stay local). An incomplete export is refused.
- One commit (``HfApi.create_commit``), after creating the repo if needed (``private`` applies
  then) and the branch ``revision`` if it does not exist. Model files left in the repo by an
  earlier, different export (an adapter beside new full weights) are deleted in the same commit;
  other files (``.gitattributes``, a licence, ``last-checkpoint/``) are kept.
- After a push every reference points at the Hub. The cards name the repo
  (:func:`coati_hf.hub.cards.retarget_card`: load snippets, lineage, ``model-index``), and every
  local folder an export names (an adapter's base, a parent in the lineage, PPO's reward model:
  ``sft`` beside it) is replaced by the repo that folder was pushed to, which its own card
  records: in the cards and in each ``adapter_config.json``. An adapter whose base folder has
  not been pushed would load from nowhere: that push is refused (:class:`PushError`) and says
  which folder to push first.
- The local files are rewritten the same way only after the commit succeeded, so the local
  folder and the repo then hold the same bytes, and a failed push leaves the folder untouched.
- Any failure (no network, offline mode, refused token, server error) raises :class:`PushError`,
  which says that the local export is intact and gives the ``coati-hf push`` command to retry.
"""

from __future__ import annotations

import fnmatch
import json
import os
import shlex
from pathlib import Path

from .cards import local_references, retarget_card
from .export import ADAPTER_SUBFOLDER, MODEL_FILE_PATTERNS, check_export
from .origin import CARD_KEY, pushed_as


class PushError(RuntimeError):
    """A push that did not happen; the local export is unchanged."""


def _is_stale_model_file(path: str) -> bool:
    top = path.split("/")[0]
    if path == ".gitattributes" or top == "last-checkpoint" or top.startswith("checkpoint-"):
        return False
    return "/" in path and top in ("adapter", "critic") or any(fnmatch.fnmatch(top, p) for p in MODEL_FILE_PATTERNS)


def retry_command(folder, repo_id: str, *, revision: str | None = None, private: bool | None = None) -> str:
    command = ["coati-hf", "push", str(folder), repo_id]
    if revision:
        command += ["--revision", revision]
    if private:
        command.append("--private")
    return " ".join(shlex.quote(part) for part in command)


def _cards(folder, manifest: dict) -> dict:
    from huggingface_hub import ModelCard

    names = [name for name in manifest["files"] if name == "README.md" or name.endswith("/README.md")]
    return {name: ModelCard.load(Path(folder) / name) for name in names}


def _adapter_configs(manifest: dict, card_name: str) -> list[str]:
    """The adapter configs that belong to the card ``card_name`` (the export's or its critic's)."""
    prefix = card_name[: -len("README.md")]
    return [name for name in (f"{prefix}{ADAPTER_SUBFOLDER}/adapter_config.json", f"{prefix}adapter_config.json") if name in manifest["files"]]


def retargeted_files(folder, manifest: dict, repo_id: str) -> dict[str, str]:
    """``{path: new text}`` of the export's cards and adapter configs, pointed at the Hub (see
    the module rules); a :class:`PushError` when an adapter's base folder is not on the Hub."""
    folder = Path(os.path.abspath(folder))
    cards = _cards(folder, manifest)
    names = set().union(*(local_references(card) for card in cards.values())) if cards else set()
    hub_ids = {name: hub_id for name in names if (hub_id := pushed_as(folder.parent / name))}
    files = {}
    for card_name, card in cards.items():
        adapter_base = (card.data.to_dict().get(CARD_KEY) or {}).get("adapter_base")
        if retarget_card(card, repo_id, hub_ids):
            files[card_name] = str(card)
        new_base = (card.data.to_dict().get(CARD_KEY) or {}).get("adapter_base")
        for config_name in _adapter_configs(manifest, card_name):
            config = json.loads((folder / config_name).read_text(encoding="utf-8"))
            if adapter_base and not (new_base or {}).get("on_hub") and config.get("base_model_name_or_path") == adapter_base["name"]:
                local = folder.parent / adapter_base["name"]
                raise PushError(
                    f"Not pushing {folder}: {config_name} names its base model by the local folder '{adapter_base['name']}', "
                    f"which is not on the Hub, so the pushed adapter would load from nowhere. Push that folder first "
                    f"(coati-hf push {shlex.quote(str(local))} YOUR_NAME/REPO), then push this one again: its adapter will name that repo."
                )
            if new_base and new_base.get("on_hub") and config.get("base_model_name_or_path") != new_base["name"]:
                config["base_model_name_or_path"] = new_base["name"]
                files[config_name] = json.dumps(config, indent=2, sort_keys=True) + "\n"
    return files


def _write_files(folder, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = Path(folder) / name
        partial = path.with_name(f".{path.name}.partial-{os.getpid()}")
        with open(partial, "w", encoding="utf-8", newline="") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(partial, path)


def push_export(
    folder: str | os.PathLike,
    repo_id: str,
    *,
    token: str | None = None,
    private: bool | None = None,
    revision: str | None = None,
    commit_message: str | None = None,
    endpoint: str | None = None,
    blocking: bool = True,
):
    """Push the export in ``folder`` to ``repo_id`` (see the module rules).

    ``token``, ``private`` and ``revision`` mean what they mean in transformers'
    ``push_to_hub``; ``endpoint`` overrides ``HF_ENDPOINT``. Returns the ``CommitInfo`` (a
    ``Future`` of it when ``blocking=False``).
    """
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi

    import coati_hf

    folder = Path(folder)
    manifest = check_export(folder)
    retry = retry_command(folder, repo_id, revision=revision, private=private)
    retargeted_files(folder, manifest, repo_id)  # refuses an adapter whose base is a local folder before anything is sent
    try:
        api = HfApi(endpoint=endpoint, token=token, library_name="coati_hf", library_version=coati_hf.__version__)
        repo_id = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model").repo_id
        if revision and not revision.startswith("refs/pr/"):
            api.create_branch(repo_id, branch=revision, exist_ok=True)
        changed = retargeted_files(folder, manifest, repo_id)
        remote = set(api.list_repo_files(repo_id, revision=revision))
        stale = sorted(path for path in remote - set(manifest["files"]) if _is_stale_model_file(path))
        operations = [
            CommitOperationAdd(path_in_repo=name, path_or_fileobj=changed[name].encode("utf-8") if name in changed else str(folder / name))
            for name in manifest["files"]
        ]
        operations += [CommitOperationDelete(path_in_repo=path) for path in stale]
        message = commit_message or f"Upload the coati_hf {manifest['stage']} export ({manifest['layout']})"
        result = api.create_commit(
            repo_id, operations=operations, commit_message=message, revision=revision, run_as_future=not blocking
        )
    except Exception as error:
        raise PushError(
            f"Could not push {folder} to the Hub repo {repo_id}: {type(error).__name__}: {error}\n"
            f"The local export in {folder} is complete and unchanged. Once the cause is fixed (network, "
            f"HF_HUB_OFFLINE, HF_TOKEN or --token), push it again with:\n    {retry}"
        ) from error
    if blocking:
        _write_files(folder, changed)
    else:
        result.add_done_callback(lambda future: future.exception() is None and _write_files(folder, changed))
    return result

"""Dataset names: `--data org/name` (with `--data-config`, `--data-split`) resolved like `datasets.load_dataset`, into
a local `save_to_disk` folder the loaders read like any other.

The repo's files come through huggingface_hub (from its cache under HF_HUB_OFFLINE=1: `datasets` alone cannot
reload a Hub dataset offline unless it processed that very dataset before), then `datasets.load_dataset` reads the
snapshot folder with the config and split asked for; the result is kept under the forgetune cache, keyed by the
snapshot's commit, config and split.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from forgetune.errors import ForgetuneError
from forgetune.io import atomic_path, cache_dir

_HUB_ID = re.compile(r"[\w.-]+/[\w.-]+")
_FILE_SUFFIXES = (".jsonl", ".json", ".parquet")


def is_dataset_name(text: str) -> bool:
    """org/name that is not a local path (a missing file keeps its own "file not found")."""
    return bool(_HUB_ID.fullmatch(text)) and not text.endswith(_FILE_SUFFIXES) and not Path(text).exists()


def hub_snapshot(repo_id: str, repo_type: str, invalid: str, missing: str,
                 allow_patterns: list[str] | None = None) -> Path:
    """A Hub repo's snapshot folder, as transformers and datasets get one: from the local cache under HF_HUB_OFFLINE,
    else downloaded into it. `invalid`, `missing`: the line for a name that is no repo id, or names no repo."""
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError, RepositoryNotFoundError

    try:
        return Path(snapshot_download(repo_id, repo_type=repo_type, allow_patterns=allow_patterns))
    except HFValidationError:
        raise ForgetuneError(f"{repo_id}: {invalid}") from None
    except RepositoryNotFoundError:
        raise ForgetuneError(f"{repo_id}: {missing}") from None
    except LocalEntryNotFoundError:
        kind = "" if repo_type == "model" else f" --repo-type {repo_type}"
        raise ForgetuneError(
            f"{repo_id}: not in the local Hugging Face cache ({constants.HF_HUB_CACHE}) and the Hub cannot be reached "
            f"(HF_HUB_OFFLINE={constants.HF_HUB_OFFLINE and 1}); download it where it can: "
            f"`hf download{kind} {repo_id}`"
        ) from None


def resolve_data(path: str, config: str | None = None, split: str = "train") -> str:
    """A local corpus path as it is; a dataset name as the local folder holding its split."""
    if not is_dataset_name(path):
        return path
    unknown = "neither a local file nor a dataset on the Hugging Face Hub"
    snapshot = str(hub_snapshot(path, "dataset", invalid=unknown, missing=unknown))
    key = hashlib.sha256(f"{snapshot}|{config}|{split}".encode()).hexdigest()[:16]
    target = cache_dir() / "datasets" / f"{path.replace('/', '--')}-{key}"
    if not target.is_dir():
        _save_split(snapshot, path, config, split, target)
    return str(target)


def _save_split(snapshot: str, name: str, config: str | None, split: str, target: Path) -> None:
    import datasets


    shown = not datasets.are_progress_bars_disabled()
    datasets.disable_progress_bars()  # "Generating train split" for a few files is noise; restored below
    try:
        rows = datasets.load_dataset(snapshot, name=config, split=split)
    except ValueError as e:  # an unknown config or split: datasets names the ones there are
        raise ForgetuneError(f"{name}: {str(e).splitlines()[0]} (--data-config, --data-split)") from None
    finally:
        if shown:
            datasets.enable_progress_bars()
    with atomic_path(target, is_dir=True) as tmp:
        rows.save_to_disk(str(tmp))

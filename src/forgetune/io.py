"""Atomic writes and stage markers: an interrupted run never leaves a half-written artefact behind."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from forgetune.errors import ForgetuneError

DONE_MARKER = ".done.json"
TMP_SUFFIX = ".tmp"  # atomic_path's temporaries: .NAME.XXXXXXXX.tmp beside NAME
# A full disk or quota: the user can fix it; any other OSError inside a write is left as it is.
NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, is_dir: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling of `path`; move it into place only if the block succeeds.

    A full disk while writing is one ForgetuneError naming `path`; whatever was at `path` before is left intact.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        _remove_leftovers(path)
        if is_dir:
            tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=TMP_SUFFIX, dir=path.parent))
        else:
            fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TMP_SUFFIX, dir=path.parent)
            os.close(fd)
            tmp = Path(name)
    except OSError as e:
        if _no_space(e) or isinstance(e, PermissionError | NotADirectoryError | FileExistsError):
            raise _write_error(path, e.strerror) from None
        raise
    os.chmod(tmp, (0o777 if is_dir else 0o666) & ~_umask())  # mkstemp/mkdtemp are private (0600/0700)
    try:
        yield tmp
        if is_dir and path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    except BaseException as e:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
        if _no_space(e):
            raise _write_error(path, "no space left on device") from None
        raise


def _remove_leftovers(path: Path) -> None:
    """Temporaries of `path` that a killed process left behind (a score folder is corpus-sized, a model dir
    model-sized): each is `.NAME.XXXXXXXX.tmp`, 8 random characters, so no other artefact's name matches."""
    leftover = re.compile(rf"\.{re.escape(path.name)}\.[a-z0-9_]{{8}}{re.escape(TMP_SUFFIX)}")
    for sibling in path.parent.iterdir():
        if leftover.fullmatch(sibling.name):
            if sibling.is_dir():
                shutil.rmtree(sibling, ignore_errors=True)
            else:
                sibling.unlink(missing_ok=True)


def _no_space(e: BaseException) -> bool:
    """A full disk or quota, as an OSError or wrapped by a library (torch, safetensors) in its own error type."""
    if isinstance(e, OSError) and e.errno in NO_SPACE:
        return True
    if isinstance(e, ForgetuneError) or not isinstance(e, Exception):
        return False
    return "No space left on device" in str(e) or "os error 28" in str(e)


def _write_error(path: Path, reason: str | None) -> ForgetuneError:
    return ForgetuneError(
        f"{path}: cannot write it ({reason}); free disk space or fix the folder and rerun the same command "
        f"(finished stages are kept; the previous {path.name}, if any, is intact)"
    )


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: str | os.PathLike, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def save_npy(path: str | os.PathLike, array: np.ndarray) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.save(f, array)


def load_npy(path: str | os.PathLike, mmap: bool = True) -> np.ndarray:
    return np.load(path, mmap_mode="r" if mmap else None)


class NpyFile:
    """A flat .npy file read and written a slice at a time, for arrays that grow with the corpus.

    A memory-mapped array would do the same, but every page it touches counts in the process's resident memory
    until the kernel writes it back; slices written here go to the file and leave the process as small as it was.
    Supports `a[i:j]` (a new, writable array) and `a[i:j] = values`, which is all the scorer asks of its output."""

    def __init__(self, path: str | os.PathLike, size: int, dtype: Any = np.float32):
        self.dtype, self.size = np.dtype(dtype), size
        self._file = open(path, "w+b", buffering=0)  # noqa: SIM115 (closed by close / the with block)
        np.lib.format.write_array_header_1_0(self._file, {"descr": np.lib.format.dtype_to_descr(self.dtype),
                                                          "fortran_order": False, "shape": (size,)})
        self._data_start = self._file.tell()
        self._file.truncate(self._data_start + size * self.dtype.itemsize)  # full length, sparse where unwritten

    def __len__(self) -> int:
        return self.size

    def _seek(self, key: slice) -> int:
        """Seek to the slice's first byte; its length in bytes."""
        start, stop, step = key.indices(self.size)
        if step != 1:
            raise ValueError("NpyFile slices must be contiguous")
        self._file.seek(self._data_start + start * self.dtype.itemsize)
        return max(0, stop - start) * self.dtype.itemsize

    def __getitem__(self, key: slice) -> np.ndarray:
        data = bytearray(self._seek(key))
        if self._file.readinto(data) != len(data):
            raise OSError(f"{self._file.name}: short read")
        return np.frombuffer(data, dtype=self.dtype)  # writable: it owns its bytearray

    def __setitem__(self, key: slice, values: Any) -> None:
        length = self._seek(key)
        data = np.ascontiguousarray(values, dtype=self.dtype)
        if data.nbytes != length:
            raise ValueError(f"{data.size} values for a slice of {length // self.dtype.itemsize}")
        view = memoryview(data).cast("B")
        while view:  # an unbuffered write may write less than asked
            view = view[self._file.write(view):]

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> NpyFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def hash_obj(*parts: Any) -> str:
    """A stable content hash of JSON-able parts (configs, upstream hashes, file fingerprints)."""
    h = hashlib.sha256()
    for part in parts:
        h.update(json.dumps(part, sort_keys=True, default=str).encode())
    return h.hexdigest()[:16]


def fingerprint_path(path: str | os.PathLike) -> str:
    """Hash of a file's bytes, or of every file below a folder, so that an edited input invalidates its stages."""
    path = Path(path)
    h = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        h.update(str(file.relative_to(path) if path.is_dir() else file.name).encode())
        with open(file, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()[:16]


def stage_done(stage_dir: Path, key: str) -> bool:
    """True when `stage_dir` was completed with the same content hash `key`."""
    marker = stage_dir / DONE_MARKER
    return marker.is_file() and read_json(marker).get("key") == key


def mark_done(stage_dir: Path, key: str, **info: Any) -> None:
    write_json(stage_dir / DONE_MARKER, {"key": key, **info})


def cache_dir() -> Path:
    """Where converted models and local copies of Hub datasets live: $FORGETUNE_CACHE, else ~/.cache/forgetune."""
    return Path(os.environ.get("FORGETUNE_CACHE", Path.home() / ".cache" / "forgetune"))

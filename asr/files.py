"""Writing files so that a reader never sees half of one: into a temporary file beside it, flushed to
disk, then renamed over it (a rename within a folder is atomic). The one home of this pattern for
checkpoints, manifests, ONNX models, hypotheses and reports; where asr caches what it can rebuild
(`cache_dir`); and a checkpoint's plain entries read without torch (`checkpoint_entries`). Imports no
torch."""

from __future__ import annotations

import os
import pickle
import shutil
import zipfile
from pathlib import Path
from typing import Any, BinaryIO, Callable, Sequence


def cache_dir() -> Path:
    """asr's cache folder for things it can rebuild (the compiled KenLM tool, encoder digests):
    $ASR_CACHE_DIR, else ~/.cache/asr."""
    return Path(os.environ.get("ASR_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "asr"))


def temp_path(path: str | os.PathLike) -> Path:
    """Where a write to `path` by this process goes before the rename."""
    path = Path(path)
    return path.with_name(f".{path.name}.tmp{os.getpid()}")


def write_atomic(path: str | os.PathLike, write: Callable[[BinaryIO], None], durable: bool = True) -> None:
    """`write(f)` into a temporary file, then rename it to `path` (its folder is made): `path` is at
    every moment either its old or its new complete version. The temporary file goes if `write` fails.
    `durable`: also flush file and folder to disk, so a power cut keeps it (a cache that can be rebuilt
    skips these syncs: they cost milliseconds per file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path)
    try:
        with open(tmp, "wb") as f:
            write(f)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    if not durable:
        return
    # The rename itself is durable only once the directory entry is on disk.
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """`text` as UTF-8 into `path`, atomically (`write_atomic`)."""
    write_atomic(path, lambda f: f.write(text.encode("utf-8")))


def copy_atomic(source: str | os.PathLike, path: str | os.PathLike) -> None:
    """Copy a file such that `path` is at every moment either its old or its new complete version."""
    with open(source, "rb") as src:
        write_atomic(path, lambda f: shutil.copyfileobj(src, f, 1 << 20))


def remove_stale_temp_files(path: str | os.PathLike) -> list[Path]:
    """Delete the temporary files of writes to `path` that never finished (their process was killed).
    Call it only where no other process is writing `path`. Returns what was removed."""
    path = Path(path)
    stale = sorted(path.parent.glob(f".{path.name}.tmp*")) if path.parent.is_dir() else []
    for tmp in stale:
        tmp.unlink(missing_ok=True)
    return stale


def checkpoint_entries(path: str | os.PathLike, names: Sequence[str] = ("config", "tokenizer")) -> dict[str, Any]:
    """The plain-data entries `names` (those present) of a checkpoint torch.save wrote (a zip holding
    data.pkl), read without importing torch: every tensor is read as None, its data never loaded.
    Only the globals a checkpoint of tensors and plain data holds are resolved, to stand-ins that do
    nothing (as torch.load(weights_only=True) allows nothing else, this runs no code from the file);
    anything else, or a file that is no such zip, is a ValueError. `asr transcribe` reads the config
    and tokenizer so before torch is imported (asr.decode.start_search_early); the model itself is
    still loaded by asr.checkpoint, which checks the file in full."""
    try:
        with zipfile.ZipFile(path) as archive:
            pickled = next((n for n in archive.namelist() if n.endswith("/data.pkl")), None)
            if pickled is None:
                raise ValueError(f"{path}: not a checkpoint (no data.pkl in the zip)")
            payload = _PlainUnpickler(archive.open(pickled)).load()
    except (OSError, zipfile.BadZipFile, pickle.UnpicklingError, EOFError, AttributeError, TypeError) as e:
        raise ValueError(f"{path}: cannot read the checkpoint without torch ({e})") from None
    if not isinstance(payload, dict):
        raise ValueError(f"{path}: not a checkpoint (holds a {type(payload).__name__})")
    return {name: payload[name] for name in names if name in payload}


def _nothing(*args: Any, **kwargs: Any) -> None:
    return None


class _Mapping(dict):
    """An OrderedDict of the checkpoint; the attributes pickled with it (a state dict's _metadata) are dropped."""

    def __setstate__(self, state: Any) -> None:
        pass


class _PlainUnpickler(pickle.Unpickler):
    """data.pkl with tensors as None: their rebuild function and storage classes become `_nothing`,
    their storages (persistent ids) None."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("collections", "OrderedDict"):
            return _Mapping
        if (module == "torch._utils" and name.startswith("_rebuild_")) or (module == "torch" and name.endswith("Storage")):
            return _nothing
        raise pickle.UnpicklingError(f"{module}.{name} is not what a checkpoint of tensors and plain data holds")

    def persistent_load(self, pid: Any) -> None:
        return None

"""Checkpoints: one file holds everything needed to use or resume a model (config, tokenizer,
feature normalization inside the model's state, weights, and for resuming the optimizer,
scheduler, step counters and RNG states).

Writes are atomic (temporary file, fsync, rename): a process killed mid-save leaves the previous
checkpoint intact, never a truncated one.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any, BinaryIO, Callable

import torch

from .config import Config, config_from_dict
from .model import CTCModel
from .text import CharTokenizer

FORMAT_VERSION = 1


def save_checkpoint(path: str | os.PathLike, payload: dict[str, Any]) -> None:
    _write_atomic(path, lambda f: torch.save({"format_version": FORMAT_VERSION, **payload}, f))


def copy_atomic(source: str | os.PathLike, path: str | os.PathLike) -> None:
    """Copy a file such that `path` is at every moment either its old or its new complete version."""
    with open(source, "rb") as src:
        _write_atomic(path, lambda f: shutil.copyfileobj(src, f, 1 << 20))


def temp_path(path: str | os.PathLike) -> Path:
    """Where a save to `path` by this process writes before the rename."""
    path = Path(path)
    return path.with_name(f".{path.name}.tmp{os.getpid()}")


def remove_stale_temp_files(path: str | os.PathLike) -> list[Path]:
    """Delete the temporary files of saves to `path` that never finished (their process was killed).
    Call it only where no other process is saving to `path`. Returns what was removed."""
    path = Path(path)
    stale = sorted(path.parent.glob(f".{path.name}.tmp*")) if path.parent.is_dir() else []
    for tmp in stale:
        tmp.unlink(missing_ok=True)
    return stale


def _write_atomic(path: str | os.PathLike, write: Callable[[BinaryIO], None]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path)
    with open(tmp, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    # The rename itself is durable only once the directory entry is on disk.
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def read_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint not found")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as e:
        raise ValueError(f"{path}: not a readable checkpoint ({type(e).__name__}: {e})") from None
    if not isinstance(payload, dict) or "model" not in payload or "config" not in payload:
        raise ValueError(f"{path}: not an asr checkpoint (no model/config inside)")
    return payload


def model_from_payload(payload: dict[str, Any]) -> tuple[CTCModel, CharTokenizer, Config]:
    config = config_from_dict(payload["config"], "checkpoint config")
    tokenizer = CharTokenizer.from_dict(payload["tokenizer"])
    model = CTCModel(config.features, config.model, len(tokenizer))
    state = {k: v.float() if v.is_floating_point() else v for k, v in payload["model"].items()}
    model.load_state_dict(state)
    return model, tokenizer, config


def load_model(
    path: str | os.PathLike, device: str | torch.device = "cpu"
) -> tuple[CTCModel, CharTokenizer, Config]:
    """A checkpoint -> (model in eval mode on `device`, its tokenizer, its config)."""
    model, tokenizer, config = model_from_payload(read_checkpoint(path))
    return model.to(device).eval(), tokenizer, config


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {name!r} was asked for, but CUDA is not available on this machine")
    return device

"""Checkpoints: one file holds everything needed to use or resume a model (config, tokenizer,
feature normalization inside the model's state, weights, and for resuming the optimizer,
scheduler, step counters and RNG states).

Writes are atomic (temporary file, fsync, rename): a process killed mid-save leaves the previous
checkpoint intact, never a truncated one.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from .config import Config, config_from_dict
from .model import CTCModel
from .text import CharTokenizer

FORMAT_VERSION = 1


def save_checkpoint(path: str | os.PathLike, payload: dict[str, Any]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        torch.save({"format_version": FORMAT_VERSION, **payload}, f)
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

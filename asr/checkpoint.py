"""Checkpoints: one file holds everything needed to use or resume a model (config, tokenizer,
feature normalization inside the model's state, weights, and for resuming the optimizer,
scheduler, step counters and RNG states).

Writes are atomic (temporary file, fsync, rename): a process killed mid-save leaves the previous
checkpoint intact, never a truncated one.
"""

from __future__ import annotations

import dataclasses
import glob
import io
import os
import re
import shutil
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, BinaryIO, Callable, Sequence

import torch

from .config import Config, config_from_dict
from .model import CTCModel
from .text import Tokenizer, tokenizer_from_dict

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


def model_from_payload(payload: dict[str, Any]) -> tuple[CTCModel, Tokenizer, Config]:
    config = config_from_dict(payload["config"], "checkpoint config")
    tokenizer = tokenizer_from_dict(payload["tokenizer"])
    model = CTCModel(config.features, config.model, len(tokenizer))
    state = {k: v.float() if v.is_floating_point() else v for k, v in payload["model"].items()}
    model.load_state_dict(state)
    return model, tokenizer, config


def load_model(
    path: str | os.PathLike, device: str | torch.device = "cpu"
) -> tuple[CTCModel, Tokenizer, Config]:
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


# ---------------------------------------------------------------------------------------------------
# Inference checkpoints (`asr export model`) and checkpoint averaging (`asr average`).

EXPORT_DTYPES = {"float16": torch.float16, "float32": torch.float32}
FLOAT16_MAX = 65504.0
# Decoders that need what a model file cannot carry: an LM file (beam-lm) or a CUDA device (gpu-beam).
UNPORTABLE_DECODERS = ("beam-lm", "gpu-beam")


def inference_payload(source: str | os.PathLike, dtype: str = "float16", note: str = "") -> dict[str, Any]:
    """What `asr export model` writes for checkpoint `source`: its config, tokenizer and weights, with
    the learned parameters in `dtype` and every buffer (feature normalizer mean/std, mel filterbank,
    window) kept in float32; no optimizer, scheduler, RNG state or training counters.

    The decode settings in force for `source` (its config's decode section, then decode.yaml next
    to it) become the config's decode section, so they travel with the file. LM and lexicon paths
    are left out (they name files on this machine), and so is a decoder that needs them or CUDA
    (then greedy); the tuned lm_weight/word_score/beam_size stay and apply with --decoder beam-lm
    --lm FILE. A `metadata` dict says where the file came from (see `export_model`)."""
    from .decode import decode_settings
    from .model import count_parameters

    if dtype not in EXPORT_DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(EXPORT_DTYPES)}, not {dtype!r}")
    source = Path(source)
    payload = read_checkpoint(source)
    model, _, config = model_from_payload(payload)
    settings = decode_settings(config.decode, source)
    decode_note = ""
    if settings.decoder in UNPORTABLE_DECODERS or settings.lm or settings.lexicon:
        used = [f"--decoder {settings.decoder}"] + [f"--{name} {os.path.basename(path)}" for name, path in
                                                     (("lm", settings.lm), ("lexicon", settings.lexicon)) if path]
        decode_note = (f"tuned for {' '.join(used)} (lm_weight {settings.lm_weight:g}, word_score "
                       f"{settings.word_score:g}, beam_size {settings.beam_size}); those files are not stored: "
                       "pass --decoder beam-lm --lm FILE [--lexicon FILE] to decode with an LM")
        settings.lm = settings.lexicon = ""
        if settings.decoder in UNPORTABLE_DECODERS:
            settings.decoder = "greedy"
    config.decode = settings

    target = EXPORT_DTYPES[dtype]
    learned = {name for name, _ in model.named_parameters()}
    weights = {}
    for name, value in model.state_dict().items():
        if name in learned and value.is_floating_point():
            largest = float(value.abs().max()) if value.numel() else 0.0
            if target == torch.float16 and largest > FLOAT16_MAX:
                raise ValueError(f"{source}: {name} holds values beyond float16's range ({largest:.3g} > "
                                 f"{FLOAT16_MAX:g}); export with --dtype float32")
            value = value.to(target)
        weights[name] = value.detach().clone()  # its own storage: only this tensor is serialized

    trained = payload.get("state") or {}
    metadata = {
        "source": _short_name(source),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "parameters": count_parameters(model),
        "dtype": dtype,
        "note": note,
        "decode_from": "decode.yaml" if os.path.isfile(_decode_yaml(source)) else "checkpoint config",
        "decode_note": decode_note,
        "trained": {k: trained[k] for k in ("epoch", "step", "best_wer", "best_cer") if k in trained},
        "versions": {"asr": _package_version(), "torch": torch.__version__},
    }
    averaged = (payload.get("metadata") or {}).get("averaged")
    if averaged:
        metadata["averaged"] = averaged
    return {"config": config.to_dict(), "tokenizer": payload["tokenizer"], "model": weights, "metadata": metadata}


def export_model(
    source: str | os.PathLike, out: str | os.PathLike, dtype: str = "float16", note: str = "", max_mb: float = 0.0
) -> tuple[int, dict[str, Any]]:
    """Write `inference_payload(source, dtype, note)` to `out` atomically; returns (its size in bytes,
    its metadata: source (parent folder/name), created (UTC, ISO 8601), parameters, dtype, note,
    decode_from, decode_note, trained (epoch, step, best dev WER/CER when known), versions).
    With max_mb > 0, a file larger than max_mb * 10^6 bytes is an error and nothing is written."""
    source, out = Path(source), Path(out)
    if out.exists() and source.exists() and out.resolve() == source.resolve():
        raise ValueError(f"{out}: the export would overwrite its source checkpoint; choose another --out")
    payload = inference_payload(source, dtype, note)
    data = io.BytesIO()
    torch.save({"format_version": FORMAT_VERSION, **payload}, data)
    size = data.tell()
    if max_mb and size > max_mb * 1e6:
        raise ValueError(f"{out}: the exported model would be {size / 1e6:.1f} MB, over --max-mb {max_mb:g} "
                         "(nothing written)")
    _write_atomic(out, lambda f: f.write(data.getbuffer()))
    return size, payload["metadata"]


def expand_checkpoint_paths(patterns: Sequence[str | os.PathLike]) -> list[Path]:
    """Paths as given, except that one holding glob characters (* ? [), e.g. a quoted
    'exp/x/epoch*.pt', is replaced by the files it matches in natural order (epoch9 before epoch10).
    A pattern that matches nothing is an error."""
    paths: list[Path] = []
    for pattern in map(str, patterns):
        if not any(c in pattern for c in "*?["):
            paths.append(Path(pattern))
            continue
        matches = sorted(glob.glob(pattern), key=lambda p: [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", p)])
        if not matches:
            raise FileNotFoundError(f"{pattern}: no checkpoint matches")
        paths += map(Path, matches)
    return paths


def average_checkpoints(paths: Sequence[str | os.PathLike]) -> dict[str, Any]:
    """A checkpoint (config, tokenizer, model, metadata) whose weights are the element-wise mean of
    those of `paths`, e.g. the last epochs of one run: floating-point tensors are summed in float64
    and stored as float32, integer and bool buffers are taken from the last checkpoint, and so are
    the config and tokenizer. The checkpoints must share the features and model config sections,
    the tokenizer, and the names and shapes of all tensors (the train and decode sections may differ,
    e.g. after a resume with more epochs); the first that does not is named in the error."""
    paths = [Path(p) for p in paths]
    if len(paths) < 2:
        raise ValueError(f"averaging needs at least two checkpoints, got {len(paths)}: {', '.join(map(str, paths))}")
    seen: dict[Path, Path] = {}
    for path in paths:
        if path.resolve() in seen:
            also = "" if str(seen[path.resolve()]) == str(path) else f" (also as {seen[path.resolve()]})"
            raise ValueError(f"{path}: given twice{also}; it would count double")
        seen[path.resolve()] = path
    reference: tuple[Path, Any, dict, dict[str, tuple]] | None = None
    sums: dict[str, torch.Tensor] = {}
    for path in paths:
        payload = read_checkpoint(path)
        config = config_from_dict(payload["config"], f"{path}: config")
        layout = {k: (tuple(v.shape), v.is_floating_point()) for k, v in payload["model"].items()}
        if reference is None:
            reference = (path, config, payload["tokenizer"], layout)
        else:
            _check_same_model(path, config, payload["tokenizer"], layout, *reference)
        for name, value in payload["model"].items():
            if value.is_floating_point():
                sums[name] = sums[name] + value.double() if name in sums else value.double()
            else:
                sums[name] = value  # integer and bool buffers: the last checkpoint's
        last_config, last_tokenizer = payload["config"], payload["tokenizer"]
        del payload
    weights = {k: (v / len(paths)).float() if v.is_floating_point() else v for k, v in sums.items()}
    result = {
        "config": last_config,
        "tokenizer": last_tokenizer,
        "model": weights,
        "metadata": {"averaged": [_short_name(p) for p in paths],
                     "created": datetime.now(timezone.utc).isoformat(timespec="seconds")},
    }
    model_from_payload(result)  # the result must load as a model
    return result


def _check_same_model(path: Path, config: Config, tokenizer: dict, layout: dict[str, tuple],
                      ref_path: Path, ref_config: Config, ref_tokenizer: dict, ref_layout: dict[str, tuple]) -> None:
    for section in ("features", "model"):
        mine, theirs = dataclasses.asdict(getattr(config, section)), dataclasses.asdict(getattr(ref_config, section))
        if mine != theirs:
            diff = "; ".join(f"{section}.{k} {mine[k]!r} vs {theirs[k]!r}" for k in mine if mine[k] != theirs.get(k))
            raise ValueError(f"{path}: {section} config differs from {ref_path} ({diff}); "
                             "only checkpoints of one model can be averaged")
    if tokenizer != ref_tokenizer:
        raise ValueError(f"{path}: tokenizer differs from that of {ref_path}; only checkpoints of one model can be averaged")
    if layout.keys() != ref_layout.keys():
        extra, missing = sorted(layout.keys() - ref_layout.keys()), sorted(ref_layout.keys() - layout.keys())
        raise ValueError(f"{path}: weights differ in names from {ref_path} (only here: {extra[:3]}, missing: {missing[:3]})")
    for name, (shape, is_float) in layout.items():
        if (shape, is_float) != ref_layout[name]:
            raise ValueError(f"{path}: {name} has shape {list(shape)}{'' if is_float else ' (integer)'}, "
                             f"but {list(ref_layout[name][0])} in {ref_path}")


def _short_name(path: Path) -> str:
    """'exp/libri4h/best.pt' -> 'libri4h/best.pt': says which run, without this machine's folders."""
    path = Path(os.path.abspath(path))
    return f"{path.parent.name}/{path.name}" if path.parent.name else path.name


def _decode_yaml(checkpoint: Path) -> str:
    return os.path.join(os.path.dirname(os.path.abspath(checkpoint)), "decode.yaml")


def _package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("asr")
    except PackageNotFoundError:
        return "unknown"

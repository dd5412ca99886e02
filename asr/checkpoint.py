"""Checkpoints: one file holds everything needed to use or resume a model (config, tokenizer,
feature normalization inside the model's state, weights, and for resuming the optimizer,
scheduler, step counters and RNG states).

Writes are atomic (temporary file, fsync, rename): a process killed mid-save leaves the previous
checkpoint intact, never a truncated one.

Loading runs no code. Every reader (transcribe, decode, resume, average, export, lexicon, the
server) goes through `read_checkpoint`, which calls `torch.load(weights_only=True)`: torch's
restricted unpickler builds only tensors and plain data (dict, list, tuple, str, bytes, int, float,
bool, None; and TorchVersion, a str) and refuses any other Python object, so a crafted file cannot
run what it pickles. The file format stays torch's `.pt` zip rather than safetensors + JSON: the
resume payload (optimizer, scheduler, RNG states) is nested plain data that safetensors cannot
hold, the safe reader comes with torch (no new dependency), and files written before mostly stay
readable (exports, averages, epoch<N>.pt and best.pt of EMA runs). What we store is plain by
construction: the numpy RNG state is kept as a tensor (asr.training.state).

Checkpoints written by asr before this format hold the numpy RNG state as a numpy array (last.pt,
and best.pt copied from it), which the safe reader refuses with a message naming the one way to
convert them: `asr upgrade-checkpoint OLD --out NEW` (`upgrade_checkpoint`), which reads the file
with the same restricted unpickler, allowing numpy arrays in addition, and writes it in the
current format.
"""

from __future__ import annotations

import dataclasses
import glob
import io
import os
import pickle
import re
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

import torch

from .config import Config, config_from_dict
from .files import write_atomic
from .model import CTCModel
from .text import Tokenizer, tokenizer_from_dict

FORMAT_VERSION = 1
# What a checkpoint must hold to build a model (best.pt, epoch<N>.pt, exports, averages) ...
MODEL_ENTRIES = ("config", "tokenizer", "model")
# ... and to resume training from it (last.pt).
RESUME_ENTRIES = MODEL_ENTRIES + ("optimizer", "scheduler", "state", "rng")
UPGRADE_COMMAND = "asr upgrade-checkpoint"
# Beyond torch's plain types, the safe loader accepts only this: a str subclass that exports written
# before the safe format hold in their metadata (the torch version), harmless to build.
SAFE_EXTRA_GLOBALS = [torch.torch_version.TorchVersion]


def save_checkpoint(path: str | os.PathLike, payload: dict[str, Any]) -> None:
    write_atomic(path, lambda f: torch.save({"format_version": FORMAT_VERSION, **payload}, f))


def load_data_file(path: str | os.PathLike, map_location: str | torch.device = "cpu", mmap: bool = False) -> Any:
    """The contents of a file written by torch.save, read with torch's restricted unpickler
    (weights_only=True): tensors and plain data only, so loading runs no code from the file. A file
    that holds anything else is refused with a ValueError naming the file and what it holds.
    `mmap`: tensors stay memory-mapped, read from disk only when used (to read a config cheaply)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint not found")
    _check_torch_file(path)
    try:
        with torch.serialization.safe_globals(SAFE_EXTRA_GLOBALS):
            return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as e:
        raise ValueError(_refusal(path, e)) from None
    except Exception as e:
        raise ValueError(_damaged(path, e)) from None


def _check_torch_file(path: Path) -> None:
    """ValueError in plain words for a file that cannot be a checkpoint at all: empty, unreadable, or
    neither a zip archive (torch.save) nor a pickle (torch.save before torch 1.6)."""
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError as e:
        raise ValueError(f"{path}: cannot be read ({e.strerror or e})") from None
    if not head:
        raise ValueError(f"{path}: empty file (0 bytes), not a checkpoint; was it copied or downloaded completely?")
    if head[:2] != b"PK" and head[:1] != b"\x80":
        raise ValueError(f"{path}: not a checkpoint: checkpoints are files written by torch.save (a zip archive), "
                         f"this one starts with {head!r}")


def _damaged(path: Path, error: Exception) -> str:
    """The message for a checkpoint torch fails to read for another reason than unsafe contents."""
    lines = str(error).strip().splitlines()
    reason = lines[0][:200] if lines else "the file ends early"
    return f"{path}: damaged or not a checkpoint: torch cannot read it ({type(error).__name__}: {reason})"


def _refusal(path: Path, error: Exception) -> str:
    """Why the safe reader refused `path`: an old asr file (numpy arrays only), or one that would run code."""
    allowed = {f"{g.__module__}.{g.__qualname__}" for g in SAFE_EXTRA_GLOBALS}
    found = [name for name in _unsafe_globals(path, error) if name not in allowed]
    if found and all(_is_numpy_array_global(name) for name in found):
        return (f"{path}: written by an older asr: it holds numpy arrays (the numpy RNG state of a training "
                f"checkpoint), which the safe loader does not read. Convert it once with: {UPGRADE_COMMAND} "
                f"{path} --out NEW.pt (it runs no code from the file either)")
    if not found:  # no code or objects named: the pickle itself is malformed (damaged or random bytes)
        detail = [line for line in str(error).splitlines() if line.strip()
                  and not line.startswith(("Weights only load failed", "Please file an issue", "Check the documentation"))]
        return (f"{path}: damaged or not a checkpoint: its contents cannot be read as data "
                f"({detail[0] if detail else type(error).__name__})")
    what = ", ".join(found)
    return (f"{path}: refused: loading this file would run Python code or build objects that are not data "
            f"({what}); asr reads checkpoints as tensors and plain data only. Do not use this file unless you "
            "know why it holds that")


def _unsafe_globals(path: Path, error: Exception) -> list[str]:
    """The Python names (module.name) the file's pickle refers to that the safe loader refuses."""
    lister = getattr(torch.serialization, "get_unsafe_globals_in_checkpoint", None)  # torch >= 2.5
    if lister is not None:
        try:
            return list(lister(path))
        except Exception:
            pass
    return re.findall(r"GLOBAL ([\w.]+)", str(error))


def _is_numpy_array_global(name: str) -> bool:
    return name.rsplit(".", 1)[-1] in ("_reconstruct", "ndarray", "dtype", "scalar") and name.startswith("numpy.") \
        or name.startswith("numpy.dtypes.")


def read_checkpoint(
    path: str | os.PathLike, map_location: str | torch.device = "cpu", required: Sequence[str] = MODEL_ENTRIES,
    mmap: bool = False,
) -> dict[str, Any]:
    """A checkpoint's payload, read safely (`load_data_file`: no code runs) and checked to hold
    `required` entries (MODEL_ENTRIES; RESUME_ENTRIES to resume training) of the right kinds;
    otherwise one ValueError names the file and everything missing. `mmap`: see load_data_file."""
    path = Path(path)
    payload = load_data_file(path, map_location, mmap)
    check_entries(payload, path, required)
    return payload


def check_entries(payload: Any, path: str | os.PathLike, required: Sequence[str] = MODEL_ENTRIES) -> None:
    """Raise one ValueError naming `path` and every required entry that is missing or of the wrong kind."""
    if not isinstance(payload, dict):
        raise ValueError(f"{path}: not an asr checkpoint (it holds a {type(payload).__name__}, not a dict of entries)")
    missing = [key for key in required if key not in payload]
    kinds = {"config": dict, "tokenizer": dict, "model": dict, "optimizer": dict, "scheduler": dict, "state": dict,
             "rng": dict}
    wrong = [f"{key} (a {type(payload[key]).__name__}, not a {kinds[key].__name__})" for key in required
             if key in payload and key in kinds and not isinstance(payload[key], kinds[key])]
    if isinstance(payload.get("model"), dict) and "model" in required:
        not_tensors = sorted(k for k, v in payload["model"].items() if not isinstance(v, torch.Tensor))
        if not_tensors:
            wrong.append(f"model (entries that are not tensors: {', '.join(map(str, not_tensors[:5]))})")
    if not missing and not wrong:
        return
    problems = []
    if missing:
        problems.append(f"missing {', '.join(missing)}")
    if wrong:
        problems.append(f"malformed {'; '.join(wrong)}")
    held = ", ".join(sorted(map(str, payload))) or "nothing"
    hint = ""
    if set(missing) - set(MODEL_ENTRIES):
        hint = "; a model file (best.pt, epoch<N>.pt, an export or average) cannot be resumed from, only last.pt"
    elif "model" in missing and "config" in missing:
        hint = "; is it an asr checkpoint at all?"
    raise ValueError(f"{path}: incomplete checkpoint: {'; '.join(problems)} (it holds: {held}){hint}")


def model_from_payload(
    payload: dict[str, Any], source: str | os.PathLike = "checkpoint"
) -> tuple[CTCModel, Tokenizer, Config]:
    """(model, tokenizer, config) from a checkpoint payload; `source` names it in errors. Weights
    that do not fit the model the config describes are one ValueError listing what differs."""
    check_entries(payload, source)
    config = config_from_dict(payload["config"], f"{source}: config")
    try:
        tokenizer = tokenizer_from_dict(payload["tokenizer"])
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{source}: malformed tokenizer entry ({type(e).__name__}: {e})") from None
    model = CTCModel(config.features, config.model, len(tokenizer))
    state = {k: v.float() if v.is_floating_point() else v for k, v in payload["model"].items()}
    mismatch = weights_mismatch(model.state_dict(), state)
    if mismatch:
        raise ValueError(f"{source}: the weights do not fit the model its config and tokenizer describe ({mismatch})")
    model.load_state_dict(state)
    return model, tokenizer, config


def weights_mismatch(expected: dict[str, torch.Tensor], found: dict[str, torch.Tensor]) -> str:
    """'' when `found` has the names and shapes of `expected`, else a short list of what differs
    (instead of load_state_dict's wall of size-mismatch lines)."""
    missing, extra = sorted(expected.keys() - found.keys()), sorted(found.keys() - expected.keys())
    shapes = [f"{k} {list(found[k].shape)} where the model has {list(expected[k].shape)}"
              for k in expected if k in found and found[k].shape != expected[k].shape]
    parts = []
    if missing:
        parts.append(f"missing {len(missing)}: {', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''}")
    if extra:
        parts.append(f"unexpected {len(extra)}: {', '.join(extra[:3])}{', ...' if len(extra) > 3 else ''}")
    if shapes:
        parts.append(f"{len(shapes)} of other shape, e.g. {'; '.join(shapes[:2])}")
    return "; ".join(parts)


def load_model(
    path: str | os.PathLike, device: str | torch.device = "cpu"
) -> tuple[CTCModel, Tokenizer, Config]:
    """A checkpoint -> (model in eval mode on `device`, its tokenizer, its config). The file is read
    by `read_checkpoint`: as data only, no code from it runs; a file that is not a complete
    checkpoint is one ValueError naming it and what is wrong."""
    model, tokenizer, config = model_from_payload(read_checkpoint(path), path)
    return model.to(device).eval(), tokenizer, config


def upgrade_checkpoint(source: str | os.PathLike, out: str | os.PathLike) -> list[str]:
    """Rewrite a checkpoint written by an older asr, whose RNG state holds numpy arrays, in the
    current format (`out` may be `source`: replaced atomically). The file is read by the same
    restricted unpickler as `read_checkpoint`, with numpy arrays allowed in addition, so this runs
    no code from it either: any other object is refused. Numpy arrays become tensors (uint32 as
    int64, which holds them exactly) and numpy scalars Python numbers, which `asr.training` reads back
    as the same RNG state. Returns where arrays were converted (e.g. ['rng.numpy[1]']); the result
    is checked to load with `read_checkpoint` before it is written."""
    source, out = Path(source), Path(out)
    if not source.is_file():
        raise FileNotFoundError(f"{source}: checkpoint not found")
    _check_torch_file(source)
    try:
        with torch.serialization.safe_globals(SAFE_EXTRA_GLOBALS + _numpy_array_globals()):
            payload = torch.load(source, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise ValueError(_refusal(source, e)) from None
    except Exception as e:
        raise ValueError(_damaged(source, e)) from None
    converted: list[str] = []
    payload = _plain_data(payload, "", converted)
    check_entries(payload, source)
    data = io.BytesIO()
    torch.save(payload, data)
    data.seek(0)
    try:
        torch.load(data, weights_only=True)  # what every reader will do
    except pickle.UnpicklingError as e:
        raise ValueError(f"{source}: still not plain data after the upgrade ({str(e).splitlines()[0]})") from None
    write_atomic(out, lambda f: f.write(data.getbuffer()))
    return converted


def retarget_encoder(source: str | os.PathLike, out: str | os.PathLike, trained_on: str | os.PathLike,
                     target: str | os.PathLike) -> str:
    """Rewrite checkpoint `source` (into `out`, which may be `source`), trained on the Whisper encoder in
    folder `trained_on`, to name the encoder in folder `target` instead, after checking that the
    checkpoint names `trained_on` and that both folders hold the same encoder weights: a model trained
    on the GPU machine from the encoder alone (scripts/gpu_prepare.sh --whisper-encoder, whose file has
    an identity of its own) then loads with the installed model. Returns the new identity."""
    from .frontend.whisper_numpy import check_identity, encoder_identity
    from .frontend.whisper_torch import same_encoder

    payload = read_checkpoint(source)
    features = payload["config"].get("features", {})
    if not features.get("encoder_id"):
        raise ValueError(f"{source}: not trained on a pretrained encoder (features.frontend "
                         f"{features.get('frontend', 'logmel')!r}): nothing to retarget")
    check_identity(Path(trained_on), features["encoder_id"])
    if not same_encoder(trained_on, target):
        raise ValueError(f"{target}: its encoder weights differ from those in {trained_on}, which {source} was "
                         "trained on: its features would differ")
    features["encoder_id"], features["encoder"] = encoder_identity(Path(target)), ""
    save_checkpoint(out, payload)
    return features["encoder_id"]


def _numpy_array_globals() -> list:
    """What pickled numpy arrays and scalars refer to, under the module names numpy 1 and 2 give them."""
    import numpy as np

    try:
        from numpy._core import multiarray  # numpy >= 2
    except ImportError:  # numpy 1
        from numpy.core import multiarray
    allowed: list = [np.ndarray, np.dtype, multiarray._reconstruct, multiarray.scalar]
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):  # a file from either numpy version
        allowed += [(multiarray._reconstruct, f"{module}._reconstruct"), (multiarray.scalar, f"{module}.scalar")]
    allowed += [getattr(np.dtypes, name) for name in dir(getattr(np, "dtypes", None)) if name.endswith("DType")]
    return allowed


def _plain_data(value: Any, where: str, converted: list[str]) -> Any:
    """`value` with numpy arrays replaced by tensors and numpy scalars by Python numbers, recursively."""
    import numpy as np

    if isinstance(value, np.ndarray):
        converted.append(where or "(top)")
        array = value.astype(np.int64) if value.dtype == np.uint32 else np.ascontiguousarray(value)
        return torch.from_numpy(array.copy())
    if isinstance(value, np.generic):
        converted.append(where or "(top)")
        return value.item()
    if isinstance(value, torch.torch_version.TorchVersion):
        return str(value)
    if isinstance(value, dict):
        return {k: _plain_data(v, f"{where}.{k}" if where else str(k), converted) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        items = [_plain_data(v, f"{where}[{i}]", converted) for i, v in enumerate(value)]
        return items if isinstance(value, list) else tuple(items)
    return value


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
    model, _, config = model_from_payload(payload, source)
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
        "versions": {"asr": _package_version(), "torch": str(torch.__version__)},  # a str, not a TorchVersion
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
    write_atomic(out, lambda f: f.write(data.getbuffer()))
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


def average_checkpoints(paths: Sequence[str | os.PathLike], weights: Sequence[float] | None = None) -> dict[str, Any]:
    """A checkpoint (config, tokenizer, model, metadata) whose weights are the element-wise mean of
    those of `paths`, e.g. the last epochs of one run, or weighted by `weights` (one per path, not
    negative; scaled to sum to 1): floating-point tensors are summed in float64 and stored as
    float32, integer and bool buffers are taken from the last checkpoint, and so are the config and
    tokenizer. The checkpoints must share the features and model config sections, the tokenizer, and
    the names and shapes of all tensors (the train and decode sections may differ, e.g. after a
    resume with more epochs); the first that does not is named in the error.

    One exception makes soups of runs from one start possible: whisper-torch models that trained
    different numbers of the encoder's top blocks (features.finetune_blocks) are each read as one
    training the most blocks, the blocks they left frozen at the encoder's own weights
    (asr.frontend.whisper_finetune.grow_trained_blocks), and the average trains that many."""
    paths = [Path(p) for p in paths]
    if len(paths) < 2:
        raise ValueError(f"averaging needs at least two checkpoints, got {len(paths)}: {', '.join(map(str, paths))}")
    seen: dict[Path, Path] = {}
    for path in paths:
        if path.resolve() in seen:
            also = "" if str(seen[path.resolve()]) == str(path) else f" (also as {seen[path.resolve()]})"
            raise ValueError(f"{path}: given twice{also}; it would count double")
        seen[path.resolve()] = path
    shares = _average_shares(paths, weights)
    blocks = _most_trained_blocks(paths)
    reference: tuple[Path, Any, dict, dict[str, tuple]] | None = None
    sums: dict[str, torch.Tensor] = {}
    for path, share in zip(paths, shares):
        payload = read_checkpoint(path)
        config = config_from_dict(payload["config"], f"{path}: config")
        if blocks is not None and config.features.finetune_blocks != blocks:
            from .frontend.whisper_finetune import grow_trained_blocks

            payload["model"] = grow_trained_blocks(payload["model"], config.features, blocks)
            config.features.finetune_blocks = payload["config"]["features"]["finetune_blocks"] = blocks
        layout = {k: (tuple(v.shape), v.is_floating_point()) for k, v in payload["model"].items()}
        if reference is None:
            reference = (path, config, payload["tokenizer"], layout)
        else:
            _check_same_model(path, config, payload["tokenizer"], layout, *reference)
        for name, value in payload["model"].items():
            if value.is_floating_point():
                value = value.double() * share
                sums[name] = sums[name] + value if name in sums else value
            else:
                sums[name] = value  # integer and bool buffers: the last checkpoint's
        last_config, last_tokenizer = payload["config"], payload["tokenizer"]
        del payload
    metadata: dict[str, Any] = {"averaged": [_short_name(p) for p in paths]}
    if weights is not None:
        metadata["weights"] = [round(s, 6) for s in shares]
    result = {
        "config": last_config,
        "tokenizer": last_tokenizer,
        "model": {k: v.float() if v.is_floating_point() else v for k, v in sums.items()},
        "metadata": {**metadata, "created": datetime.now(timezone.utc).isoformat(timespec="seconds")},
    }
    model_from_payload(result)  # the result must load as a model
    return result


def _average_shares(paths: list[Path], weights: Sequence[float] | None) -> list[float]:
    """Each checkpoint's share of the average: equal, or `weights` scaled to sum to 1."""
    if weights is None:
        return [1.0 / len(paths)] * len(paths)
    weights = [float(w) for w in weights]
    if len(weights) != len(paths):
        raise ValueError(f"{len(weights)} weights for {len(paths)} checkpoints ({', '.join(map(str, paths))}): "
                         "give one weight per checkpoint")
    if any(not w >= 0 for w in weights) or not sum(weights) > 0:
        raise ValueError(f"averaging weights must be 0 or more and not all 0, got {' '.join(f'{w:g}' for w in weights)}")
    return [w / sum(weights) for w in weights]


def _most_trained_blocks(paths: list[Path]) -> int | None:
    """The most encoder blocks any of `paths` trained when they are all whisper-torch models read at
    the last layer and do not all train the same number (see average_checkpoints); else None.
    Only the configs are read: the weights stay memory-mapped, untouched."""
    counts = []
    for path in paths:
        features = read_checkpoint(path, mmap=True)["config"].get("features", {})
        if features.get("frontend") != "whisper-torch" or features.get("encoder_layers", "last") != "last":
            return None
        counts.append(int(features.get("finetune_blocks", 0)))
    return max(counts) if len(set(counts)) > 1 else None


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

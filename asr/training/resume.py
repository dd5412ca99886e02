"""Continuing from a checkpoint: the resume guard (`--resume` continues only with the config last.pt
was trained with, up to RESUME_SAFE_KEYS; `--force-resume` also with changed train/specaug values,
never with changed features/model/tokenizer sections), restoring last.pt's weights, optimizer,
schedule and RNG states, and train.init_from (fine-tuning from another run's weights)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from ..checkpoint import RESUME_ENTRIES, read_checkpoint, weights_mismatch
from ..config import Config, TrainConfig, config_from_dict
from ..frontend import feature_width_factor
from ..frontend.whisper_finetune import renumber_top_blocks
from ..model import CTCModel
from ..text import Tokenizer
from .distributed import DistributedSetup
from .state import TrainState, rng_state_of_rank, set_rng_state

log = logging.getLogger("asr.training")

# The resume guard (`check_resume_config`): `--resume` continues a run only with the config its
# last.pt was trained with, except for these keys, which change when the run stops, how often it
# logs or saves, how it loads data or where it runs, never what it learns. ("section.*": all keys.)
RESUME_SAFE_KEYS = (
    "train.max_minutes", "train.max_cpu_minutes", "train.max_steps", "train.log_every", "train.feature_cache",
    "train.save_every_steps", "train.num_workers", "train.preload_audio", "train.init_from", "train.device",
    "train.keep_epoch_checkpoints", "decode.*",
)
# train.epochs may grow (the cosine schedule then stretches to the new end from the current step);
# fewer epochs, like any other key, needs --force-resume.
RESUME_GROWING_KEYS = ("train.epochs",)
# These sections fix the shape and meaning of the weights: a run cannot continue with other values,
# not even with --force-resume.
RESUME_FIXED_SECTIONS = ("features", "model", "tokenizer")
# train.init_from may start a features.frontend whisper-torch run from a head trained on the whisper
# frontend (issue 23: the shipped head under fine-tuned top blocks): the same encoder (encoder_id) and
# feature width, so the head's weights fit; these keys may differ, and the frontend's trained part
# (top blocks, layer weights) starts from the encoder's own values. Likewise from a whisper-torch run
# that trained fewer top blocks (features.finetune_blocks k -> k' > k, last layer): its k blocks stay
# the top k, the k' - k below them start from the encoder's own (growing the trained part downwards).
WHISPER_TO_TORCH_KEYS = ("features.frontend", "features.encoder_layers", "features.finetune_blocks")


def check_resume_config(saved: Config, new: Config, force: bool = False, path: str | Path = "last.pt") -> list[str]:
    """Whether a run trained with `saved` (the config in its last.pt at `path`) may continue with
    `new`. Returns the accepted differences as 'key old -> new' (for the log); raises a ValueError
    naming every differing key with both values when a change is refused:
    - a features/model/tokenizer key (RESUME_FIXED_SECTIONS): always, the weights would not fit;
    - any other key not in RESUME_SAFE_KEYS (and train.epochs made smaller), unless `force`."""
    changes = _weight_fitting_changes(saved, new)
    fixed = [c for c in changes if c[0].split(".")[0] in RESUME_FIXED_SECTIONS]
    guarded = [c for c in changes if c not in fixed and not _safe_to_change(*c)]
    describe = lambda items: ", ".join(f"{k} {old!r} -> {value!r}" for k, old, value in items)  # noqa: E731
    run = Path(path).parent
    if fixed:
        raise ValueError(
            f"{run}: cannot resume: {describe(fixed)} changes the model itself (the features, model and tokenizer "
            f"settings fix the shape and meaning of the weights in {path}), which no option can continue. Train it "
            f"in another folder (--out, or --exp-name in a recipe), or undo the change to continue this run")
    if guarded and not force:
        raise ValueError(
            f"{run}: the config differs from the one {path} was trained with: {describe(guarded)}. Resuming would "
            f"continue the old run, mixing both settings. Train in another folder (--out, or --exp-name in a "
            f"recipe) to start afresh with them, or add --force-resume to continue this run with the new values. "
            f"(Safe to change when resuming: {', '.join(RESUME_SAFE_KEYS)}, and train.epochs upwards)")
    return [f"{k} {old!r} -> {value!r}" for k, old, value in changes]


def _apply_schedule_settings(optimizer: torch.optim.Optimizer, scheduler: torch.optim.lr_scheduler.LambdaLR,
                             tc: TrainConfig) -> None:
    """After loading their states from a checkpoint: the optimizer and schedule follow this run's
    train.lr and train.weight_decay (the states hold the values they were saved with, which would
    silently win after --force-resume), and the current learning rate is that of this run's schedule
    (e.g. stretched by more train.epochs) at the current step. With unchanged settings this sets the
    very values that were loaded, so an exact resume stays exact."""
    # The groups of loop.parameter_groups: the head at train.lr, a trained frontend's at train.lr x train.frontend_lr_scale.
    for i, group in enumerate(optimizer.param_groups):
        group["lr_scale"] = 1.0 if i == 0 else tc.frontend_lr_scale
    scheduler.base_lrs = [tc.lr * group["lr_scale"] for group in optimizer.param_groups]
    for group, base_lr, factor in zip(optimizer.param_groups, scheduler.base_lrs, scheduler.lr_lambdas):
        group["initial_lr"] = base_lr
        group["weight_decay"] = tc.weight_decay
        group["lr"] = base_lr * factor(scheduler.last_epoch)


def _weight_fitting_changes(saved: Config, new: Config) -> list[tuple[str, Any, Any]]:
    """_config_changes from the config weights were trained with (`saved`) to `new`, once `new`
    takes the saved pretrained encoder when it names none: the weights keep the encoder they were
    trained on, and building the model then checks that the encoder found here is that one."""
    if saved.features.encoder_id and not new.features.encoder_id:
        new.features.encoder_id = saved.features.encoder_id
    return _config_changes(saved.to_dict(), new.to_dict())


def _config_changes(saved: dict, new: dict) -> list[tuple[str, Any, Any]]:
    """[(section.key, saved value, new value)] for every option that differs."""
    return [(f"{section}.{key}", saved.get(section, {}).get(key), value)
            for section, values in new.items() for key, value in values.items()
            if saved.get(section, {}).get(key) != value]


def _safe_to_change(key: str, old: Any, new: Any) -> bool:
    if key in RESUME_GROWING_KEYS:
        return new >= old
    return key in RESUME_SAFE_KEYS or f"{key.split('.')[0]}.*" in RESUME_SAFE_KEYS


def read_init_checkpoint(path: str, config: Config) -> dict[str, Any]:
    """The checkpoint train.init_from names (a training run's, an average or an export), once found
    to fit this run: trained with the same features, model and tokenizer settings, since anything
    else would not fit the weights or would mean other symbols. Checked before any data is read."""
    payload = read_checkpoint(path, map_location="cpu")
    trained = config_from_dict(payload["config"], f"{path}: config")
    head_moves = _whisper_head_to_torch(trained, config) or _more_top_blocks(trained, config)
    differ = [f"{k} {old!r} -> {new!r}" for k, old, new in _weight_fitting_changes(trained, config)
              if k.split(".")[0] in RESUME_FIXED_SECTIONS and not (head_moves and k in WHISPER_TO_TORCH_KEYS)]
    if differ:
        raise ValueError(f"{path}: cannot fine-tune from it (train.init_from): this run's {'; '.join(differ)} "
                         "differs from the settings it was trained with")
    return payload


def _whisper_head_to_torch(trained: Config, new: Config) -> bool:
    """Whether `new` runs a head trained on the whisper frontend on whisper-torch features of the
    same width (see WHISPER_TO_TORCH_KEYS; the encoder identity is checked as any features key)."""
    return (trained.features.frontend == "whisper" and new.features.frontend == "whisper-torch"
            and feature_width_factor(new.features) == feature_width_factor(trained.features))


def _more_top_blocks(trained: Config, new: Config) -> bool:
    """Whether `new` trains more top blocks of the same whisper-torch last layer than `trained` did
    (see WHISPER_TO_TORCH_KEYS)."""
    a, b = trained.features, new.features
    return (a.frontend == b.frontend == "whisper-torch" and a.encoder_layers == b.encoder_layers == "last"
            and b.finetune_blocks > a.finetune_blocks)


def load_init_weights(model: CTCModel, tokenizer: Tokenizer, payload: dict[str, Any], path: str) -> None:
    """Load train.init_from's weights and feature normalization into `model` to fine-tune it."""
    if payload["tokenizer"] != tokenizer.to_dict():
        raise ValueError(f"{path}: cannot fine-tune from it (train.init_from): its tokenizer is not this run's")
    own = model.state_dict()
    weights = dict(payload["model"])
    features = payload["config"].get("features", {})
    if features.get("frontend") in ("whisper", "whisper-torch"):
        # Its k trained blocks (none for a whisper-frontend head) are the top k of this run's k'; the
        # frontend's other trained parameters keep the encoder's own values, as the model was built.
        shift = getattr(model.frontend, "finetune_blocks", 0) - features.get("finetune_blocks", 0)
        weights = renumber_top_blocks(weights, shift)
        weights.update({k: v for k, v in own.items() if k.startswith("frontend.") and k not in weights})
    model.load_state_dict({k: v.to(own[k].dtype) if k in own else v for k, v in weights.items()})
    log.info("initialized from %s (weights and feature normalization)", path)


def read_resume_checkpoint(last_path: Path, config: Config, force_resume: bool) -> dict[str, Any]:
    """last.pt, once its config is found fit to continue with `config` (check_resume_config).
    Checked before any data is read: a refused resume costs nothing."""
    payload = read_checkpoint(last_path, map_location="cpu", required=RESUME_ENTRIES)
    accepted = check_resume_config(config_from_dict(payload["config"], f"{last_path}: config"), config,
                                   force_resume, last_path)
    if accepted:
        log.warning("resuming %s with changed settings: %s", last_path, "; ".join(accepted))
    return payload


def restore_checkpoint(
    payload: dict[str, Any], last_path: Path, tokenizer: Tokenizer, model: CTCModel, optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LambdaLR, specaug_rng: torch.Generator, setup: DistributedSetup,
    device: torch.device, tc: TrainConfig,
) -> TrainState:
    """Load last.pt's weights, optimizer, schedule and this rank's RNG states; returns its state."""
    if payload["tokenizer"] != tokenizer.to_dict():
        raise ValueError(f"{last_path}: cannot resume: the tokenizer built from this config and training data "
                         "differs from the run's (BPE pieces trained on other transcripts?); train in another "
                         "folder (--out, or --exp-name in a recipe)")
    mismatch = weights_mismatch(model.state_dict(), payload["model"])
    if mismatch:
        raise ValueError(f"{last_path}: cannot resume: its weights do not fit the model of this config ({mismatch})")
    model.load_state_dict(payload["model"])
    optimizer.load_state_dict(payload["optimizer"])
    scheduler.load_state_dict(payload["scheduler"])
    _apply_schedule_settings(optimizer, scheduler, tc)
    state = TrainState(**payload["state"])
    rng_state = rng_state_of_rank(payload, setup)
    if rng_state is not None:
        set_rng_state(rng_state, specaug_rng, device)
    if state.world_size != setup.world_size:
        log.warning("resuming a run trained by %d processes with %d: it continues, but not exactly as it would "
                    "have (other batch split, other schedule length)", state.world_size, setup.world_size)
        state.batch_in_epoch = state.batch_in_epoch * state.world_size // setup.world_size
        state.world_size = setup.world_size
    return state



# --------------------------------------------------------------------------- a folder holding a run

# What a run leaves in its folder that a new run into the same folder would replace or mix with its
# own (best.pt replaced by a worse model, metrics.jsonl holding both runs): any of these, or an
# epoch<N>.pt, means the folder holds a run. train.log and config.yaml alone are what a run that
# stopped during setup (a bad option) leaves: nothing to lose, so they do not count, but
# `overwrite` removes them with the rest.
RUN_RESULTS = ("last.pt", "best.pt", "metrics.jsonl")
RUN_LOGS = ("config.yaml", "train.log", "training.png")


def run_results(out_dir: str | Path) -> list[Path]:
    """The files in `out_dir` that show a training run has been there (RUN_RESULTS, epoch<N>.pt)."""
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        return []
    found = [out_dir / name for name in RUN_RESULTS if (out_dir / name).is_file()]
    return found + sorted(out_dir.glob("epoch*.pt"))


def check_out_dir(out_dir: str | Path, resume: bool, overwrite: bool) -> None:
    """Refuse (ValueError) to start a new run in a folder that holds one, unless it is resumed or
    `overwrite` was asked for; refuse both at once. Runs before any data is read."""
    if resume and overwrite:
        raise ValueError("--resume and --overwrite exclude each other: continue the run in the folder, or start it again")
    found = run_results(out_dir)
    if found and not resume and not overwrite:
        names = ", ".join(p.name for p in found[:4]) + (f" and {len(found) - 4} more" if len(found) > 4 else "")
        raise ValueError(f"{out_dir}: already holds a training run ({names}); continue it with --resume, start it again "
                         "with --overwrite (deletes that run's checkpoints and logs), or choose another --out")


def clear_run(out_dir: str | Path) -> list[Path]:
    """Delete the files of the run in `out_dir` (`overwrite`): its checkpoints, metrics and logs.
    Other files in the folder stay. Returns what was deleted."""
    out_dir = Path(out_dir)
    removed = run_results(out_dir) + [out_dir / name for name in RUN_LOGS if (out_dir / name).is_file()]
    for path in removed:
        path.unlink()
    return removed

"""Experiment configuration: YAML files in conf/ plus `section.key=value` overrides on the command line.

Every option has a typed default in a dataclass, so a misspelt key or a wrong type is an error
that names the key, not a silently ignored setting.
"""

from __future__ import annotations

import dataclasses
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import yaml

from .frontend import FeatureConfig, check_feature_config
from .text import TokenizerConfig


# The model's and SpecAugment's options live here, not beside the code that uses them, so that a
# config (and a checkpoint's) is read without importing torch (issue 27: the CLI reads the decode
# settings before torch is imported). asr.model and asr.frontend.specaug import them from here.
@dataclass
class ModelConfig:
    subsampling: str = "conv"  # "conv": two strided 3x3 convolutions; "stack": concatenate frames
    subsampling_factor: int = 4  # conv: 2 or 4; stack: any >= 1
    conv_channels: int = 32
    rnn_type: str = "lstm"  # lstm | gru | rnn (tanh)
    bidirectional: bool = True
    hidden_size: int = 320  # per direction
    num_layers: int = 3
    dropout: float = 0.1  # between recurrent layers and before the output layer


@dataclass
class SpecAugmentConfig:
    freq_masks: int = 2
    freq_width: int = 27  # at most this many mel bins per mask
    time_masks: int = 2
    time_width: float = 0.05  # at most this fraction of the utterance per mask
    max_time_width: int = 40  # ...and at most this many frames
    time_warp: int = 0  # move a random point of each utterance by up to this many frames, stretching both sides (0: off)


@dataclass
class TrainConfig:
    epochs: int = 20
    max_steps: int = 0  # stop after this many updates (0: no limit); the LR schedule still spans `epochs`
    max_minutes: float = 0.0  # stop after this much wall time (0: no limit); the run is still scored
    # stop after this much CPU time of the training process (0: no limit): a budget that stays equal
    # between runs on a busy machine, for experiment series
    max_cpu_minutes: float = 0.0
    max_batch_seconds: float = 120.0  # padded audio seconds per batch (longest x count)
    max_batch_size: int = 0  # 0: no limit
    max_duration: float = 40.0  # training utterances longer than this are left out (seconds)
    lr: float = 2e-3  # peak learning rate
    warmup_steps: int = 500
    final_lr_ratio: float = 0.05  # cosine decay from lr to lr * final_lr_ratio over the run
    weight_decay: float = 1e-2
    grad_clip: float = 5.0
    # utterance: each utterance's summed CTC loss, averaged over the batch (gradient norms ~100, so
    # grad_clip acts on every update); token: each divided by its transcript length first (~1/100)
    loss_norm: str = "utterance"
    short_first_epochs: int = 0  # SortaGrad: batches shortest first (not shuffled) in the first N epochs
    precision: str = "bf16"  # bf16 autocast on CUDA; CPU always runs float32
    num_workers: int = 2
    preload_audio: bool = True  # decode all audio into RAM once (fits for corpora of a few hours)
    log_every: int = 25  # steps between log lines (the only host syncs of the loop)
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    dev_max_utts: int = 0  # validate on the first N dev utterances (0: all)
    save_every_steps: int = 0  # also write last.pt every N updates mid-epoch (0: only after each epoch)
    # Exponential moving average of the weights after every update (0: off; e.g. 0.999, about the last
    # 1000 updates); validation, best.pt and epoch<N>.pt then hold the average, last.pt both.
    ema_decay: float = 0.0
    keep_epoch_checkpoints: int = 0  # also save epoch<N>.pt (weights only) after each epoch, keeping the last N (0: none)
    speed_perturb: list[float] = field(default_factory=list)  # e.g. [0.9, 1.0, 1.1]: one per utterance and epoch ([]: off)
    noise_prob: float = 0.0  # share of training utterances (per epoch) that get additive noise
    noise_snr_db: list[float] = field(default_factory=lambda: [10.0, 30.0])  # [low, high]: SNR drawn uniformly
    noise_manifest: str = ""  # manifest of noise recordings (e.g. MUSAN) to mix in ("": white or pink noise)
    # features.frontend=whisper: where the frozen encoder's outputs are kept between epochs and runs
    # (keyed by audio and encoder; "": in memory only).
    feature_cache: str = "~/.cache/asr/features"
    # Fine-tuning: start from this checkpoint's weights and feature normalization (same features,
    # model and tokenizer settings) instead of a random initialization, with a fresh optimizer and
    # schedule ("": from scratch). Only read when a run starts; --resume continues from last.pt.
    init_from: str = ""
    # A frontend that trains (features.frontend whisper-torch with finetune_blocks or "weighted" layers)
    # learns at train.lr x this, on the same schedule: pretrained blocks want a smaller step than a fresh head.
    frontend_lr_scale: float = 1.0


@dataclass
class DecodeConfig:
    decoder: str = "greedy"  # greedy | beam (prefix beam search, no LM) | beam-lm (flashlight + KenLM) | gpu-beam (CUDA)
    batch_seconds: float = 300.0  # padded audio seconds per inference batch
    beam_size: int = 10
    lm: str = ""  # KenLM ARPA or binary model for beam-lm ("": none)
    lexicon: str = ""  # spelling lexicon for beam-lm ("": lexicon-free)
    lm_weight: float = 2.0
    word_score: float = 0.0
    beam_threshold: float = 25.0  # beam-lm: prune hypotheses this far (log-prob) below the best
    workers: int = 0  # beam-lm: processes searching a batch's utterances at once (0: as many as torch's CPU threads)
    chunk_seconds: float = 30.0  # transcribe: longer files are decoded in chunks of this length (0: never)
    chunk_overlap: float = 4.0  # seconds shared by consecutive chunks; the seam is in its middle


@dataclass
class Config:
    features: FeatureConfig = field(default_factory=FeatureConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    specaug: SpecAugmentConfig = field(default_factory=SpecAugmentConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    decode: DecodeConfig = field(default_factory=DecodeConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


class ConfigError(ValueError):
    pass


def config_from_dict(data: dict, source: str = "config") -> Config:
    config = Config()
    for section_name, values in (data or {}).items():
        if not hasattr(config, section_name):
            raise ConfigError(f"{source}: unknown section {section_name!r} (known: {', '.join(_sections())})")
        if not isinstance(values, dict):
            raise ConfigError(f"{source}: section {section_name!r} must be a mapping")
        section = getattr(config, section_name)
        for key, value in values.items():
            set_option(section, section_name, key, value, source)
    check_options(config, source)
    return config


def check_options(config: Config, source: str) -> None:
    """The checks that span options (each option's type is checked as it is set): a ConfigError
    naming the source, before any data is read or model built."""
    try:
        check_feature_config(config.features)
    except ValueError as e:
        raise ConfigError(f"{source}: {e}") from None


def load_config(path: str | os.PathLike | None, overrides: Sequence[str] = ()) -> Config:
    """Read a YAML config (None: all defaults) and apply `section.key=value` overrides."""
    data: dict = {}
    source = "defaults"
    if path is not None:
        source = str(path)
        if not Path(path).is_file():
            raise ConfigError(f"{path}: config file not found")
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f) or {}
    config = config_from_dict(data, source)
    apply_overrides(config, overrides)
    if overrides:
        check_options(config, f"{source} with overrides {' '.join(overrides)}")
    return config


def apply_overrides(config: Config, overrides: Sequence[str]) -> None:
    for item in overrides:
        if "=" not in item or "." not in item.split("=", 1)[0]:
            raise ConfigError(f"override {item!r} is not of the form section.key=value (e.g. train.lr=1e-3)")
        dotted, raw = item.split("=", 1)
        section_name, key = dotted.split(".", 1)
        if not hasattr(config, section_name):
            raise ConfigError(f"override {item!r}: unknown section {section_name!r} (known: {', '.join(_sections())})")
        set_option(getattr(config, section_name), section_name, key, yaml.safe_load(raw), f"override {item!r}")


def _sections() -> list[str]:
    return [f.name for f in dataclasses.fields(Config)]


def set_option(section: Any, section_name: str, key: str, value: Any, source: str) -> None:
    """Set section.key = value after checking the key exists and the value has the option's type."""
    fields = {f.name: f for f in dataclasses.fields(section)}
    if key not in fields:
        raise ConfigError(f"{source}: unknown option {section_name}.{key} (known: {', '.join(fields)})")
    name = f"{section_name}.{key}"
    if isinstance(getattr(section, key), list):
        kind = _list_element_type(section, key)
        if not isinstance(value, list):
            raise ConfigError(f"{source}: {name} must be a list of {kind.__name__} such as [0.9, 1.0, 1.1] "
                              f"(quoted on a shell command line), got {value!r}")
        value = [_checked_value(item, kind, f"{name}[{i}]", source) for i, item in enumerate(value)]
    else:
        value = _checked_value(value, type(getattr(section, key)), name, source)
    setattr(section, key, value)


def _list_element_type(section: Any, key: str) -> type:
    """The element type of a list[...] option, from the dataclass annotation."""
    element = typing.get_args(typing.get_type_hints(type(section))[key])
    return element[0] if element else object


def _checked_value(value: Any, kind: type, name: str, source: str) -> Any:
    """`value` as an option of type `kind` (ints are taken for floats), or a ConfigError naming the option."""
    if kind is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{source}: {name} must be true or false, got {value!r}")
    elif kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    elif kind is float and isinstance(value, str):
        # YAML 1.1 reads "1e-3" (no dot) as a string; users write learning rates that way.
        try:
            value = float(value)
        except ValueError:
            raise ConfigError(f"{source}: {name} must be a float, got {value!r}") from None
    elif not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
        raise ConfigError(f"{source}: {name} must be a {kind.__name__}, got {value!r}")
    return value

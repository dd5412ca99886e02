"""The Slaney-scale mel filterbank (librosa.filters.mel's defaults, which openai/whisper ships as
mel_filters.npz), in numpy: importing librosa for it cost 1.6 s of every `asr transcribe` (issue 27).

The arithmetic follows librosa 0.10-0.11 step by step, in float64, rounded to float32 where librosa
stores into its float32 array (each triangle, then again after the area normalization), so the
result is bit-identical to librosa's: the int8 Whisper encoder turns even the last bit of a feature
into a different quantization step (asr/frontend/whisper_numpy.py), so "close" would not do.
tests/test_mel_filters.py compares them for every shape asr uses.
"""

from __future__ import annotations

import numpy as np

# The Slaney mel scale: linear below 1 kHz (3 mels per 200 Hz), logarithmic above (27 mels per factor 6.4).
_LINEAR_HZ_PER_MEL = 200.0 / 3
_LOG_START_HZ = 1000.0
_LOG_START_MEL = _LOG_START_HZ / _LINEAR_HZ_PER_MEL
_LOG_STEP = np.log(6.4) / 27.0

_cache: dict[tuple[int, int, int], np.ndarray] = {}


def hz_to_mel(hz: np.ndarray) -> np.ndarray:
    """(N,) frequencies in Hz -> (N,) Slaney mels, as librosa.hz_to_mel(htk=False)."""
    hz = np.atleast_1d(np.asarray(hz, dtype=np.float64))
    mels = hz / _LINEAR_HZ_PER_MEL
    log_part = hz >= _LOG_START_HZ
    mels[log_part] = _LOG_START_MEL + np.log(hz[log_part] / _LOG_START_HZ) / _LOG_STEP
    return mels


def mel_to_hz(mels: np.ndarray) -> np.ndarray:
    """(N,) Slaney mels -> (N,) Hz, as librosa.mel_to_hz(htk=False)."""
    mels = np.atleast_1d(np.asarray(mels, dtype=np.float64))
    hz = _LINEAR_HZ_PER_MEL * mels
    log_part = mels >= _LOG_START_MEL
    hz[log_part] = _LOG_START_HZ * np.exp(_LOG_STEP * (mels[log_part] - _LOG_START_MEL))
    return hz


def slaney_mel_filters(sample_rate: int, n_fft: int, n_mels: int) -> np.ndarray:
    """(n_fft // 2 + 1, n_mels) float32: triangular filters with centres evenly spaced on the Slaney
    mel scale from 0 Hz to sample_rate / 2, each divided by its width in Hz / 2 (equal area), i.e.
    librosa.filters.mel(sr=sample_rate, n_fft=n_fft, n_mels=n_mels).T. Cached per shape; do not
    modify the returned array."""
    key = (int(sample_rate), int(n_fft), int(n_mels))
    if key not in _cache:
        fft_hz = np.fft.rfftfreq(n=n_fft, d=1.0 / sample_rate)
        low_mel, high_mel = hz_to_mel(np.array([0.0, sample_rate / 2]))
        edges_hz = mel_to_hz(np.linspace(low_mel, high_mel, n_mels + 2))
        widths = np.diff(edges_hz)
        ramps = np.subtract.outer(edges_hz, fft_hz)
        weights = np.zeros((n_mels, n_fft // 2 + 1), dtype=np.float32)
        for i in range(n_mels):
            rising, falling = -ramps[i] / widths[i], ramps[i + 2] / widths[i + 1]
            weights[i] = np.maximum(0, np.minimum(rising, falling))
        weights *= (2.0 / (edges_hz[2:n_mels + 2] - edges_hz[:n_mels]))[:, np.newaxis]
        _cache[key] = np.ascontiguousarray(weights.T)
    return _cache[key]

"""asr.frontend.mel_filters: the Slaney mel filterbank in numpy, bit-identical to librosa's (the int8
Whisper encoder turns a last-bit difference in its input into a different quantization step)."""

from __future__ import annotations

import numpy as np
import pytest

from asr.frontend.mel_filters import hz_to_mel, mel_to_hz, slaney_mel_filters

librosa = pytest.importorskip("librosa")


@pytest.mark.parametrize("sample_rate, n_fft, n_mels", [
    (16000, 400, 80),  # Whisper tiny..medium, and the logmel frontend's defaults
    (16000, 400, 128),  # Whisper large-v3
    (16000, 512, 40),
    (8000, 256, 64),
    (22050, 1024, 128),
])
def test_filters_equal_librosa_bit_for_bit(sample_rate, n_fft, n_mels):
    ours = slaney_mel_filters(sample_rate, n_fft, n_mels)
    reference = librosa.filters.mel(sr=sample_rate, n_fft=n_fft, n_mels=n_mels).T
    assert ours.dtype == np.float32 and ours.shape == (n_fft // 2 + 1, n_mels)
    assert np.array_equal(ours, reference)


def test_mel_scale_equals_librosa_on_both_sides_of_1_khz():
    hz = np.array([0.0, 100.0, 999.9, 1000.0, 1000.1, 4000.0, 8000.0, 11025.0])
    assert np.array_equal(hz_to_mel(hz), librosa.hz_to_mel(hz, htk=False))
    mels = hz_to_mel(hz)
    assert np.array_equal(mel_to_hz(mels), librosa.mel_to_hz(mels, htk=False))
    assert np.allclose(mel_to_hz(mels), hz, rtol=1e-12, atol=1e-9)


def test_whisper_and_onnx_paths_use_it_without_importing_librosa():
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    code = ("import sys\nfrom asr.frontend.whisper_numpy import whisper_log_mel\nimport numpy as np\n"
            "whisper_log_mel(np.zeros(16000, dtype=np.float32))\nimport asr.serving.onnx_runtime\n"
            "assert 'librosa' not in sys.modules, 'librosa was imported'\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=root, env={**os.environ, "PYTHONPATH": str(root)},
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]

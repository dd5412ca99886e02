"""Shared fixtures for the unit tests: synthetic audio files and the optional shared data folder."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import soundfile

REPO_ROOT = Path(__file__).resolve().parent.parent

# Tests whose outcome rests on float rounding: two computations compared, or a bound on their
# difference. Torch picks its CPU kernels by machine (ATEN_CPU_CAPABILITY: default, avx2, avx512), and
# rounding differs between them, so a bound measured on one machine's kernels can fail on another's
# (issue 22). .ci/run runs these a second time under `default`, the kernels any CPU can run and the
# most different rounding (`-m numerical`, about a minute). Whole modules, or module::test-name prefixes.
NUMERICAL_TESTS = (
    "test_audio.py", "test_data.py", "test_decode.py", "test_export.py", "test_features.py", "test_model.py",
    "test_reliability.py::test_cuda_oom", "test_reliability.py::test_ten_minutes_chunked_log_probs_equal",
    "test_reliability.py::test_read_chunks", "test_reliability.py::test_frame_stitching",
    "test_train.py::test_resume_mid_epoch", "test_shards.py::test_two_ranks",
)


# Tests marked `cuda` compare the GPU with the CPU (tests/test_gpu.py). Without CUDA they are skipped,
# unless this variable is 1: then they run with the CPU standing in for the GPU (a dry run of the
# test code itself: each comparison is CPU against CPU, and what needs CUDA alone skips). The GPU
# check's CPU mode (scripts/gpu_check.sh --cpu) runs them so.
CUDA_DRY_RUN_ENV = "ASR_CUDA_TESTS_ON_CPU"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark the NUMERICAL_TESTS `numerical`; skip the tests marked `cuda` where no CUDA device is
    (CI), unless asked to dry-run them."""
    for item in items:
        if item.nodeid.removeprefix("tests/").startswith(NUMERICAL_TESTS):
            item.add_marker(pytest.mark.numerical)
    marked = [item for item in items if item.get_closest_marker("cuda")]
    if not marked or os.environ.get(CUDA_DRY_RUN_ENV) == "1":
        return
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason=f"needs a CUDA device, and none is here ({CUDA_DRY_RUN_ENV}=1 dry-runs it on the CPU)")
    for item in marked:
        item.add_marker(skip)


@pytest.fixture(scope="session")
def cuda_device():
    """The device a `cuda` test compares with the CPU: the first GPU, or in a dry run the CPU."""
    import torch

    if torch.cuda.is_available():
        return torch.device("cuda", 0)
    if os.environ.get(CUDA_DRY_RUN_ENV) == "1":
        return torch.device("cpu")
    pytest.skip("needs a CUDA device")


def tone(freq: float = 440.0, seconds: float = 1.0, sr: int = 16000, amplitude: float = 0.5) -> np.ndarray:
    """A float32 sine wave."""
    t = np.arange(int(round(seconds * sr))) / sr
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def chirp(f0: float = 100.0, f1: float = 4000.0, seconds: float = 1.0, sr: int = 16000, amplitude: float = 0.5) -> np.ndarray:
    """A float32 linear chirp from f0 to f1 Hz."""
    t = np.arange(int(round(seconds * sr))) / sr
    phase = 2 * np.pi * (f0 * t + (f1 - f0) * t * t / (2 * seconds))
    return (amplitude * np.sin(phase)).astype(np.float32)


def write_audio(
    path: Path,
    samples: np.ndarray,
    sr: int,
    format: str | None = None,
    subtype: str | None = None,
) -> Path:
    """Write `samples` ((n,) or (n, channels)) with soundfile; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    soundfile.write(str(path), samples, sr, format=format, subtype=subtype)
    return path


@pytest.fixture
def make_wav(tmp_path):
    """Factory: make_wav(name, kind='tone'|'chirp', seconds=1.0, sr=16000, freq=440.0, channels=1,
    subtype='PCM_16') writes a synthetic WAV (or FLAC/OGG by extension) into tmp_path and returns
    (path, samples written as float32 array)."""

    def make(
        name: str = "tone.wav",
        kind: str = "tone",
        seconds: float = 1.0,
        sr: int = 16000,
        freq: float = 440.0,
        channels: int = 1,
        subtype: str | None = None,
        amplitude: float = 0.5,
    ) -> tuple[Path, np.ndarray]:
        if kind == "tone":
            mono = tone(freq, seconds, sr, amplitude)
        elif kind == "chirp":
            mono = chirp(100.0, min(4000.0, sr / 2 - 100), seconds, sr, amplitude)
        else:
            raise ValueError(kind)
        if channels == 1:
            samples = mono
        else:
            # Each channel gets a different gain so that the mono mix is distinguishable.
            samples = np.stack([mono * (c + 1) / channels for c in range(channels)], axis=1).astype(np.float32)
        path = write_audio(tmp_path / name, samples, sr, subtype=subtype)
        return path, samples

    return make


class AudioFactory:
    """Signal generators plus a writer into one test's tmp_path (available as the `audio` fixture,
    so test modules need not import from conftest)."""

    tone = staticmethod(tone)
    chirp = staticmethod(chirp)

    def __init__(self, folder: Path):
        self.folder = folder

    def write(self, name: str, samples: np.ndarray, sr: int, format: str | None = None, subtype: str | None = None) -> Path:
        return write_audio(self.folder / name, samples, sr, format=format, subtype=subtype)


@pytest.fixture
def audio(tmp_path) -> AudioFactory:
    return AudioFactory(tmp_path)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data relative to the repository root; skips the test when it is absent."""
    path = (REPO_ROOT / ".." / "shared" / "data").resolve()
    if not path.is_dir():
        pytest.skip(f"shared data folder {path} not present")
    return path


@pytest.fixture(scope="session")
def synth_model(tmp_path_factory) -> tuple[Path, Path]:
    """(checkpoint, manifest): a small model trained on the generated corpus of tests/synth.py, once
    per session (about 20 s of one CPU thread). It transcribes those eight files exactly (dev WER 0
    in training), so tests through the API, the server and the web page can check real transcripts."""
    import torch

    from asr.config import load_config
    from asr.data import read_manifest
    from asr.training import train
    from synth import write_synth_corpus

    folder = tmp_path_factory.mktemp("synth_model")
    manifest = write_synth_corpus(folder / "corpus")
    utts = read_manifest(manifest)
    config = load_config(None, [
        "model.subsampling=stack", "model.subsampling_factor=2", "model.hidden_size=96", "model.num_layers=2",
        "model.dropout=0.0", "specaug.freq_masks=0", "specaug.time_masks=0", "features.n_mels=40",
        "train.epochs=40", "train.max_batch_seconds=4", "train.lr=5e-3", "train.warmup_steps=10",
        "train.num_workers=0", "train.log_every=10", "train.device=cpu", "train.seed=0"])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        state = train(config, utts, utts, folder / "exp")
    finally:
        torch.set_num_threads(threads)
    assert state.best_wer == 0.0, f"the synthetic fixture model did not learn its corpus (WER {state.best_wer}%)"
    return folder / "exp" / "best.pt", manifest


def tracked_models() -> list[Path]:
    """The model files committed to the repository (`models/*.pt` that git tracks), sorted; [] when
    there are none or git cannot say. A test that wants a real model uses these and nothing else:
    a checkpoint lying in an exp/ folder, or an untracked file in models/, exists only on the machine
    that made it, and a test that used it would pass or fail depending on where it runs."""
    try:
        listed = subprocess.run(["git", "-C", str(REPO_ROOT), "ls-files", "-z", "--", "models/*.pt"],
                                capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return []
    if listed.returncode != 0:
        return []
    return sorted(REPO_ROOT / name for name in listed.stdout.split("\0") if name and (REPO_ROOT / name).is_file())


TINY_LM_WORDS = ["the", "cat", "sat", "ran", "a", "on", "mat", "dog"]


@pytest.fixture(scope="session")
def tiny_word_lm(tmp_path_factory) -> tuple[str, str]:
    """(ARPA bigram, lexicon in CharTokenizer's symbols) over TINY_LM_WORDS, built here: beam-lm
    decoding without the shipped LM."""
    from asr.lm import build_ngram_model, write_arpa, write_lexicon

    folder = tmp_path_factory.mktemp("tiny_lm")
    lm = build_ngram_model(["the cat sat", "the cat ran", "a cat sat on the mat", "the dog ran"], order=2)
    write_arpa(lm, folder / "lm.arpa")
    write_lexicon(TINY_LM_WORDS, folder / "lexicon.txt")
    return str(folder / "lm.arpa"), str(folder / "lexicon.txt")

"""asr.api (`asr.load`, `Recognizer.transcribe`): the README's snippet as written, files and arrays,
word times and confidences, and the errors for bad inputs. Uses the `synth_model` fixture (conftest)."""

from __future__ import annotations

import contextlib
import io
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch

torch.set_num_threads(1)

import asr  # noqa: E402
from asr.audio import AudioError  # noqa: E402
from asr.data import read_manifest  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def readme_python_snippet() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("## Python API", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


@pytest.fixture(scope="module")
def recognizer(synth_model):
    return asr.load(synth_model[0])


@pytest.fixture(scope="module")
def corpus(synth_model):
    return read_manifest(synth_model[1])


def test_import_asr_is_cheap_and_does_not_import_torch():
    code = "import sys, asr; assert 'torch' not in sys.modules, 'import asr imported torch'; print(asr.__all__)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "load" in out.stdout


def test_readme_snippet_runs_as_written(synth_model, corpus, tmp_path, monkeypatch):
    checkpoint, _ = synth_model
    shutil.copy(corpus[0].audio, tmp_path / "speech.wav")
    monkeypatch.setenv("ASR_MODEL", str(checkpoint))  # asr.load() with no path: the default model
    monkeypatch.chdir(tmp_path)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(readme_python_snippet(), "README.md", "exec"), {})
    lines = out.getvalue().splitlines()
    expected = corpus[0].text
    assert lines[0] == f"{expected} ({corpus[0].duration:.2f} s)"
    assert [line.split()[-1] for line in lines[1:-2]] == expected.split()
    assert lines[-2:] == [expected, expected]


def test_files_and_arrays_give_the_known_transcripts(recognizer, corpus):
    results = recognizer.transcribe([u.audio for u in corpus])
    assert [r.text for r in results] == [u.text for u in corpus]
    for r, u in zip(results, corpus):
        assert r.path == u.audio
        assert r.duration == pytest.approx(u.duration, abs=1e-3)
        assert [w.word for w in r.words] == u.text.split()
        for a, b in zip(r.words, r.words[1:]):
            assert a.start < a.end <= b.start < b.end
        assert all(0.0 < w.confidence <= 1.0 for w in r.words)
        assert r.words[-1].end <= r.duration
    samples, rate = soundfile.read(corpus[1].audio, dtype="float32")
    single = recognizer.transcribe(samples, sample_rate=rate)
    assert single.text == corpus[1].text and single.path is None
    # The same samples as an array, a torch tensor and a (samples, rate) tuple: the same result as the file.
    file_result = results[1]
    for given in (samples, torch.from_numpy(samples), (samples, rate)):
        r = recognizer.transcribe(given) if isinstance(given, tuple) else recognizer.transcribe(given, sample_rate=rate)
        assert r.words == file_result.words


def test_arrays_at_another_rate_are_resampled_like_files(recognizer, corpus, tmp_path):
    """A stereo array at 44.1 kHz is mixed down and resampled exactly as the same audio in a file."""
    import librosa

    samples, rate = soundfile.read(corpus[2].audio, dtype="float32")
    stereo_44k = np.stack([librosa.resample(samples, orig_sr=rate, target_sr=44100)] * 2, axis=1)
    soundfile.write(tmp_path / "stereo.wav", stereo_44k, 44100, subtype="FLOAT")
    from_array = recognizer.transcribe((stereo_44k, 44100))
    assert from_array.words == recognizer.transcribe(str(tmp_path / "stereo.wav")).words
    assert from_array.duration == pytest.approx(samples.shape[0] / rate, abs=1e-3)
    assert from_array.text  # speech-like audio, not silence


def test_word_confidence_is_lower_on_noisier_audio(recognizer, corpus):
    samples, rate = soundfile.read(corpus[3].audio, dtype="float32")
    clean = recognizer.transcribe(samples, sample_rate=rate)
    noisy = samples + 0.5 * np.random.default_rng(0).standard_normal(samples.shape[0]).astype(np.float32)
    degraded = recognizer.transcribe(noisy, sample_rate=rate)
    mean = lambda r: sum(w.confidence for w in r.words) / max(len(r.words), 1)  # noqa: E731
    assert mean(degraded) < mean(clean)


def test_bad_inputs_raise_clear_errors(recognizer, tmp_path):
    text = tmp_path / "notes.wav"
    text.write_text("not audio")
    with pytest.raises(AudioError, match="notes.wav: not a readable audio file"):
        recognizer.transcribe(str(text))
    with pytest.raises(AudioError, match="input 0 \\(samples\\): the file holds no audio samples"):
        recognizer.transcribe(np.zeros(0, dtype=np.float32))
    with pytest.raises(ValueError, match="must be floats"):
        recognizer.transcribe(np.zeros(1600, dtype=np.int16))
    with pytest.raises(ValueError, match="is a folder"):
        recognizer.transcribe(str(tmp_path))
    with pytest.raises(ValueError, match="expected a file path"):
        recognizer.transcribe(b"bytes")


def test_samples_the_model_cannot_take_as_they_are_are_refused(recognizer, corpus):
    """Issue 29: channels first, a rate of 0 or below, int16 values as floats: each a ValueError
    saying what is wrong and how to fix it, instead of noise transcribed, 0 taken as 16 kHz, or a
    libsndfile error about a temporary file."""
    samples, rate = soundfile.read(corpus[0].audio, dtype="float32")
    stereo = np.stack([samples, samples])  # (2, N): channels first
    with pytest.raises(ValueError, match=r"input 0: samples of shape \(2, \d+\) look channels-first.*samples\.T"):
        recognizer.transcribe(stereo, sample_rate=rate)
    assert recognizer.transcribe(stereo.T, sample_rate=rate).text == corpus[0].text
    for bad in (0, -1, 16000.0):
        with pytest.raises(ValueError, match="sample_rate must be a positive number"):
            recognizer.transcribe(samples, sample_rate=bad)
    with pytest.raises(ValueError, match="input 0: sample rate -1: must be a positive"):
        recognizer.transcribe((samples, -1))
    with pytest.raises(ValueError, match=r"input 0: samples reach 1\d{4}.*divide by 32768"):
        recognizer.transcribe(np.round(samples * 32767), sample_rate=rate)
    assert recognizer.transcribe(3 * samples, sample_rate=rate).error == ""  # overshoot is not refused


def test_a_bad_item_in_a_list_gets_its_error_and_the_others_their_transcripts(recognizer, corpus, tmp_path):
    """One bad input in a list no longer loses every result: its Transcript carries the error."""
    (tmp_path / "notes.wav").write_text("not audio")
    samples, rate = soundfile.read(corpus[1].audio, dtype="float32")
    results = recognizer.transcribe([corpus[1].audio, str(tmp_path / "notes.wav"), (samples, rate), b"bytes",
                                     samples.astype(np.int16), np.stack([samples] * 2)])
    assert [r.text for r in results] == [corpus[1].text, "", corpus[1].text, "", "", ""]
    assert [bool(r.error) for r in results] == [False, True, False, True, True, True]
    assert "notes.wav: not a readable audio file" in results[1].error
    assert results[3].error.startswith("input 3: expected a file path")
    assert results[4].error.startswith("input 4: samples must be floats")
    assert results[5].error.startswith("input 5: samples of shape")


def test_load_without_a_model_says_where_it_looked(tmp_path, monkeypatch):
    monkeypatch.setenv("ASR_MODEL", str(tmp_path / "missing.pt"))
    with pytest.raises(FileNotFoundError, match="ASR_MODEL=.*missing.pt: no such model file"):
        asr.load()

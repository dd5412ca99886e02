"""Manifests, the dataset and length-bucketed batching.

A manifest is JSON Lines, one utterance per line:
    {"id": "1272-128104-0000", "audio": "/data/.../1272-128104-0000.flac", "duration": 5.855,
     "text": "mister quilter is the apostle of the middle classes", "speaker": "1272"}
Optional keys "start" and "end" (seconds) select a segment of a longer file. Relative audio paths
are resolved against the manifest's folder.
"""

from __future__ import annotations

import json
import math
import os
import random
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch
import torchaudio.functional as AF
from torch.utils.data import Dataset, Sampler
from tqdm import tqdm

from .audio import read_audio, to_mono_and_rate
from .files import write_text_atomic
from .text import Tokenizer


@dataclass
class Utterance:
    id: str
    audio: str
    duration: float
    text: str
    speaker: str = ""
    start: float | None = None  # seconds into `audio`, for segments of long recordings
    end: float | None = None

    def to_json(self) -> str:
        data = {k: v for k, v in asdict(self).items() if v is not None}
        return json.dumps(data, ensure_ascii=False)


def read_manifest(path: str | os.PathLike, need_text: bool = False) -> list[Utterance]:
    """The utterances of a JSON Lines manifest (id, audio, duration; text, speaker, start, end
    optional), audio paths resolved against the manifest's folder. A malformed line is a ValueError
    naming FILE:LINE and the problem: among them a `text` that is not a string (null, a number), and
    with `need_text` (training, dev sets, LM text) a line without `text`. Without it, a missing
    `text` is "" (audio to decode, with no reference)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: manifest not found")
    utts = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                data = json.loads(line)
                text = _text_of(data, need_text)
                utt = Utterance(
                    id=str(data["id"]),
                    audio=str(data["audio"]),
                    duration=float(data["duration"]),
                    text=text,
                    speaker=str(data.get("speaker", "")),
                    start=None if data.get("start") is None else float(data["start"]),
                    end=None if data.get("end") is None else float(data["end"]),
                )
            except ManifestTextError as e:
                raise ValueError(f"{path}:{number}: {e}") from None
            except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
                raise ValueError(f"{path}:{number}: not a manifest entry ({type(e).__name__}: {e})") from None
            if not os.path.isabs(utt.audio):
                utt.audio = str(path.parent / utt.audio)
            utts.append(utt)
    return utts


class ManifestTextError(ValueError):
    """A manifest line's `text` is missing where it is needed, or is not a string."""


def _text_of(data: Any, need_text: bool) -> str:
    """The `text` of a parsed manifest line; ManifestTextError saying what is wrong with it."""
    if not isinstance(data, dict):
        raise TypeError(f"expected a JSON object, got {type(data).__name__}")
    if "text" not in data:
        if need_text:
            raise ManifestTextError('no "text": every utterance for training or scoring needs its transcript '
                                    '(use "text": "" for one that holds no speech)')
        return ""
    text = data["text"]
    if not isinstance(text, str):
        raise ManifestTextError(f'"text" is {json.dumps(text)}, not a string; write the transcript in quotes '
                                '("" for an utterance that holds no speech)')
    return text


def write_manifest(path: str | os.PathLike, utts: Sequence[Utterance]) -> None:
    """Writes atomically: a reader never sees half a manifest."""
    write_text_atomic(path, "".join(utt.to_json() + "\n" for utt in utts))


def load_utterance_audio(utt: Utterance, sample_rate: int) -> torch.Tensor:
    """The utterance's mono waveform at `sample_rate`, cut to [start, end] when given. Shape (samples,)."""
    samples, rate = read_audio(utt.audio)
    if utt.start is not None or utt.end is not None:
        first = int(round((utt.start or 0.0) * rate))
        last = int(round(utt.end * rate)) if utt.end is not None else len(samples)
        samples = samples[first:last]
    return to_mono_and_rate(torch.from_numpy(np.ascontiguousarray(samples)), rate, sample_rate)


class SpeechDataset(Dataset):
    """Items are (waveform (samples,) float32, labels (n,) int64, index).

    With `preload`, every waveform is decoded once into RAM (threads; libsndfile releases the GIL)
    as int16, half the size of float32 and exact for 16-bit sources: a few hours of 16 kHz audio is
    a few hundred MB, and decoding Opus/FLAC every epoch would otherwise starve the GPU.

    Training data can be perturbed on the fly, differently each epoch, once `set_epoch` is called
    (before that, e.g. while normalization statistics are estimated, items are clean): speed
    perturbation by a factor drawn from `speed_perturb` (Kaldi/ESPnet style: tempo and pitch change
    together), then, with probability `noise_prob`, additive noise at an SNR drawn uniformly from
    `noise_snr_db` ([low, high] dB): white or pink noise, or a random stretch of a recording from
    `noise_manifest` (e.g. MUSAN) when one is given. Every draw derives from (seed, epoch, index)
    alone, so a resumed run, each DDP rank and each loader worker see the same perturbations.
    """

    def __init__(
        self,
        utts: Sequence[Utterance],
        tokenizer: Tokenizer,
        sample_rate: int,
        preload: bool = False,
        num_threads: int = 4,
        speed_perturb: Sequence[float] = (),
        noise_prob: float = 0.0,
        noise_snr_db: Sequence[float] = (10.0, 30.0),
        noise_manifest: str | os.PathLike = "",
        seed: int = 0,
    ):
        self.utts = list(utts)
        self.sample_rate = sample_rate
        self.speed_perturb = _check_speed_factors(speed_perturb, sample_rate)
        if not 0.0 <= noise_prob <= 1.0:
            raise ValueError(f"noise probability (train.noise_prob) must be in [0, 1], got {noise_prob}")
        if len(noise_snr_db) != 2 or not noise_snr_db[0] <= noise_snr_db[1]:
            raise ValueError(f"noise SNR range (train.noise_snr_db) must be [low, high] dB, got {list(noise_snr_db)}")
        self.noise_prob = noise_prob
        self.noise_snr_db = (float(noise_snr_db[0]), float(noise_snr_db[1]))
        self.noise_utts = read_manifest(noise_manifest) if noise_manifest else []
        if noise_manifest and not self.noise_utts:
            raise ValueError(f"{noise_manifest}: the noise manifest (train.noise_manifest) lists no recordings")
        self.seed = seed
        self.epoch: int | None = None  # None: no perturbation
        self.labels = []
        for utt in self.utts:
            try:
                self.labels.append(torch.tensor(tokenizer.encode(utt.text), dtype=torch.long))
            except ValueError as e:
                raise ValueError(f"utterance {utt.id} ({utt.audio}): {e}") from None
        self.cache: list[torch.Tensor] | None = None
        if preload:
            load = lambda utt: _to_int16(load_utterance_audio(utt, sample_rate))  # noqa: E731
            with ThreadPoolExecutor(max_workers=num_threads) as pool:
                self.cache = list(
                    tqdm(pool.map(load, self.utts), total=len(self.utts), desc="loading audio", unit="utt", leave=False)
                )

    def __len__(self) -> int:
        return len(self.utts)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        if self.cache is not None:
            wave = self.cache[index].float() / 32768.0
        else:
            wave = load_utterance_audio(self.utts[index], self.sample_rate)
        if self.epoch is not None:
            wave = self.perturb(wave, index, self.epoch)
        return wave, self.labels[index], index

    def set_epoch(self, epoch: int) -> None:
        """Perturb items as for `epoch` from now on. DataLoader workers copy the dataset when
        iteration starts, so call this before iterating a (non-persistent-worker) loader."""
        self.epoch = epoch

    def speed_factor(self, index: int, epoch: int) -> float:
        """The speed perturbation factor of item `index` in `epoch` (1.0 without perturbation)."""
        if not self.speed_perturb:
            return 1.0
        rng = _item_rng(self.seed, epoch, index, _SPEED_STREAM)
        return self.speed_perturb[int(rng.integers(len(self.speed_perturb)))]

    def perturb(self, wave: torch.Tensor, index: int, epoch: int) -> torch.Tensor:
        """(samples,) -> (samples / factor,): item `index`'s waveform as perturbed in `epoch`."""
        wave = change_speed(wave, self.speed_factor(index, epoch), self.sample_rate)
        if self.noise_prob > 0.0:
            rng = _item_rng(self.seed, epoch, index, _NOISE_STREAM)
            if rng.random() < self.noise_prob:
                snr_db = rng.uniform(*self.noise_snr_db)
                if self.noise_utts:
                    noise = noise_excerpt(self.noise_utts, wave.shape[0], self.sample_rate, rng)
                else:
                    noise = torch.from_numpy(coloured_noise(wave.shape[0], rng.choice(["white", "pink"]), rng))
                wave = add_noise(wave, noise, snr_db)
        return wave

    @property
    def durations(self) -> list[float]:
        """Seconds per item, the most it can last: speed perturbation lengthens an utterance by up
        to 1 / min(factor), and batching must budget for that."""
        stretch = 1.0 / min(self.speed_perturb) if self.speed_perturb else 1.0
        return [u.duration * stretch for u in self.utts]


_SPEED_STREAM, _NOISE_STREAM = 0, 1  # independent draws: turning noise on leaves the speed factors as they were


def _item_rng(seed: int, epoch: int, index: int, stream: int) -> np.random.Generator:
    """A generator that depends on nothing but its arguments (no global or per-process state)."""
    return np.random.default_rng([seed % 2**64, epoch, index, stream])


def _check_speed_factors(factors: Sequence[float], sample_rate: int) -> list[float]:
    factors = [float(f) for f in factors]
    if any(not f > 0 or round(f * sample_rate) < 1 for f in factors):
        raise ValueError(f"speed perturbation factors (train.speed_perturb) must be positive, got {factors}")
    return factors


def change_speed(wave: torch.Tensor, factor: float, sample_rate: int) -> torch.Tensor:
    """(samples,) -> (ceil(samples / factor),): the audio played `factor` times faster, tempo and
    pitch together (sox `speed`, as Kaldi and ESPnet perturb): resampled from sample_rate x factor,
    rounded to a whole rate, to sample_rate. Factor 1 returns the input."""
    if factor == 1.0:
        return wave
    return AF.resample(wave, orig_freq=round(sample_rate * factor), new_freq=sample_rate)


def coloured_noise(num_samples: int, colour: str, rng: np.random.Generator) -> np.ndarray:
    """(num_samples,) float32 noise of unit power: "white" (flat spectrum) or "pink" (power ~ 1/f,
    by shaping white noise in the frequency domain)."""
    white = rng.standard_normal(num_samples)
    if colour == "white" or num_samples < 2:
        noise = white
    elif colour == "pink":
        spectrum = np.fft.rfft(white)
        frequency = np.arange(len(spectrum), dtype=np.float64)
        spectrum[0] = 0.0  # no DC offset
        spectrum[1:] /= np.sqrt(frequency[1:])
        noise = np.fft.irfft(spectrum, n=num_samples)
    else:
        raise ValueError(f"unknown noise colour {colour!r} (white or pink)")
    power = float(np.mean(noise * noise)) if num_samples else 0.0
    return (noise / math.sqrt(power) if power > 0 else noise).astype(np.float32)


def noise_excerpt(noise_utts: Sequence[Utterance], num_samples: int, sample_rate: int, rng: np.random.Generator) -> torch.Tensor:
    """(num_samples,) of a randomly chosen noise recording from a random offset, repeated when the
    recording is shorter. A recording's own start/end (a segment) are respected."""
    noise_utt = noise_utts[int(rng.integers(len(noise_utts)))]
    seconds = num_samples / sample_rate
    offset = float(rng.uniform(0.0, max(0.0, noise_utt.duration - seconds)))
    first = (noise_utt.start or 0.0) + offset
    last = first + seconds if noise_utt.end is None else min(first + seconds, noise_utt.end)
    noise = load_utterance_audio(Utterance(noise_utt.id, noise_utt.audio, seconds, "", start=first, end=last), sample_rate)
    if noise.shape[0] == 0:
        raise ValueError(f"noise recording {noise_utt.id} ({noise_utt.audio}): no samples from {first:.2f} s on")
    return noise.repeat(math.ceil(num_samples / noise.shape[0]))[:num_samples]


def add_noise(wave: torch.Tensor, noise: torch.Tensor, snr_db: float) -> torch.Tensor:
    """wave + noise scaled so that 10 log10(power(wave) / power(noise)) = snr_db, powers being mean
    squares over the whole utterance. Shapes (samples,). A silent wave or noise is left as it is."""
    signal_power = float(wave.double().pow(2).mean()) if wave.numel() else 0.0
    noise_power = float(noise.double().pow(2).mean()) if noise.numel() else 0.0
    if signal_power == 0.0 or noise_power == 0.0:
        return wave
    scale = math.sqrt(signal_power / (noise_power * 10.0 ** (snr_db / 10.0)))
    return wave + scale * noise.to(wave.dtype)


def _to_int16(wave: torch.Tensor) -> torch.Tensor:
    return (wave * 32768.0).round().clamp(-32768, 32767).to(torch.int16)


@dataclass
class Batch:
    waves: torch.Tensor  # (B, S) float32, zero-padded
    wave_lengths: torch.Tensor  # (B,) samples
    labels: torch.Tensor  # (B, L) int64, zero-padded
    label_lengths: torch.Tensor  # (B,)
    indices: list[int] = field(default_factory=list)  # positions in the dataset

    def to(self, device: torch.device | str, non_blocking: bool = False) -> "Batch":
        move = lambda t: t.to(device, non_blocking=non_blocking)  # noqa: E731
        return Batch(move(self.waves), move(self.wave_lengths), move(self.labels), move(self.label_lengths), self.indices)

    def pin_memory(self) -> "Batch":
        return Batch(
            self.waves.pin_memory(), self.wave_lengths.pin_memory(), self.labels.pin_memory(),
            self.label_lengths.pin_memory(), self.indices,
        )


def collate(items: Sequence[tuple[torch.Tensor, torch.Tensor, int]]) -> Batch:
    waves, labels, indices = zip(*items)
    wave_lengths = torch.tensor([w.shape[0] for w in waves], dtype=torch.long)
    label_lengths = torch.tensor([y.shape[0] for y in labels], dtype=torch.long)
    return Batch(
        waves=torch.nn.utils.rnn.pad_sequence(list(waves), batch_first=True),
        wave_lengths=wave_lengths,
        labels=torch.nn.utils.rnn.pad_sequence(list(labels), batch_first=True) if max(label_lengths) > 0
        else torch.zeros(len(labels), 1, dtype=torch.long),
        label_lengths=label_lengths,
        indices=list(indices),
    )


class BucketBatchSampler(Sampler[list[int]]):
    """Batches of similar-length utterances whose padded size stays under `max_batch_seconds`
    (longest utterance in the batch x batch size), so batch size adapts to length and padding stays low.

    Each epoch: utterances are sorted by duration jittered by +-`jitter` (so batch composition
    changes between epochs), cut into batches, and the batch order is shuffled. Everything derives
    from (seed, epoch), so an epoch's batches can be rebuilt exactly on resume; `start_batch` skips
    the batches already trained on. With `num_replicas` > 1 (distributed training) each rank takes
    every num_replicas-th batch, after dropping the tail that would leave ranks unequal. In the first
    `short_first_epochs` epochs the batches come shortest first instead of shuffled.
    """

    def __init__(
        self,
        durations: Sequence[float],
        max_batch_seconds: float,
        max_batch_size: int = 0,
        shuffle: bool = True,
        seed: int = 0,
        jitter: float = 0.1,
        num_replicas: int = 1,
        rank: int = 0,
        short_first_epochs: int = 0,
    ):
        self.durations = list(durations)
        self.short_first_epochs = short_first_epochs
        self.max_batch_seconds = max_batch_seconds
        self.max_batch_size = max_batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.jitter = jitter if shuffle else 0.0
        self.num_replicas = num_replicas
        self.rank = rank
        self.epoch = 0
        self.start_batch = 0

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch = epoch
        self.start_batch = start_batch

    def epoch_batches(self, epoch: int) -> list[list[int]]:
        """All batches of an epoch, before splitting between ranks."""
        rng = random.Random(self.seed * 1_000_003 + epoch)
        keys = [d * (1.0 + self.jitter * (2 * rng.random() - 1)) for d in self.durations]
        order = sorted(range(len(self.durations)), key=lambda i: (keys[i], i))
        batches: list[list[int]] = []
        current: list[int] = []
        longest = 0.0
        for i in order:
            d = self.durations[i]
            new_longest = max(longest, d)
            too_big = current and (new_longest * (len(current) + 1) > self.max_batch_seconds)
            too_many = self.max_batch_size and len(current) >= self.max_batch_size
            if too_big or too_many:
                batches.append(current)
                current, new_longest = [], d
            current.append(i)
            longest = new_longest
        if current:
            batches.append(current)
        if epoch < self.short_first_epochs:
            pass  # SortaGrad (Deep Speech 2): short utterances first while the model is young
        elif self.shuffle:
            rng.shuffle(batches)
        if self.num_replicas > 1:
            usable = len(batches) - len(batches) % self.num_replicas
            batches = batches[:usable]
        return batches

    def _my_batches(self) -> list[list[int]]:
        return self.epoch_batches(self.epoch)[self.rank :: self.num_replicas]

    def __iter__(self) -> Iterator[list[int]]:
        yield from self._my_batches()[self.start_batch :]

    def __len__(self) -> int:
        return max(0, len(self._my_batches()) - self.start_batch)

    def padding_fraction(self, epoch: int = 0) -> float:
        """Padded share of the frames in an epoch's batches: 1 - sum(duration) / sum(longest x size)."""
        total = padded = 0.0
        for batch in self.epoch_batches(epoch):
            durations = [self.durations[i] for i in batch]
            total += sum(durations)
            padded += max(durations) * len(durations)
        return 0.0 if padded == 0 else 1.0 - total / padded


def total_hours(utts: Sequence[Utterance]) -> float:
    return math.fsum(u.duration for u in utts) / 3600.0


def hold_out_speakers(utts: Sequence[Utterance], count: int, seed: int = 0) -> tuple[list[Utterance], list[Utterance]]:
    """(rest, held out): all utterances of `count` speakers drawn at random (by `seed`) go to the
    held-out set, for a dev set of unseen speakers when a corpus has only train and test. The draw
    depends only on the set of speaker names and the seed, not on the manifest's order."""
    speakers = sorted({u.speaker for u in utts})
    if "" in speakers:
        raise ValueError("every utterance needs a speaker to hold speakers out (some have none)")
    if not 0 < count < len(speakers):
        raise ValueError(f"cannot hold out {count} of {len(speakers)} speakers: keep at least one on each side")
    held = set(random.Random(seed).sample(speakers, count))
    return [u for u in utts if u.speaker not in held], [u for u in utts if u.speaker in held]

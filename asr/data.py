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
from typing import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler
from tqdm import tqdm

from .audio import read_audio, to_mono_and_rate
from .text import CharTokenizer


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


def read_manifest(path: str | os.PathLike) -> list[Utterance]:
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
                utt = Utterance(
                    id=str(data["id"]),
                    audio=str(data["audio"]),
                    duration=float(data["duration"]),
                    text=str(data.get("text", "")),
                    speaker=str(data.get("speaker", "")),
                    start=None if data.get("start") is None else float(data["start"]),
                    end=None if data.get("end") is None else float(data["end"]),
                )
            except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
                raise ValueError(f"{path}:{number}: not a manifest entry ({type(e).__name__}: {e})") from None
            if not os.path.isabs(utt.audio):
                utt.audio = str(path.parent / utt.audio)
            utts.append(utt)
    return utts


def write_manifest(path: str | os.PathLike, utts: Sequence[Utterance]) -> None:
    """Writes atomically: a reader never sees half a manifest."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for utt in utts:
            f.write(utt.to_json() + "\n")
    os.replace(tmp, path)


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
    """

    def __init__(
        self,
        utts: Sequence[Utterance],
        tokenizer: CharTokenizer,
        sample_rate: int,
        preload: bool = False,
        num_threads: int = 4,
    ):
        self.utts = list(utts)
        self.sample_rate = sample_rate
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
        return wave, self.labels[index], index

    @property
    def durations(self) -> list[float]:
        return [u.duration for u in self.utts]


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
    every num_replicas-th batch, after dropping the tail that would leave ranks unequal.
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
    ):
        self.durations = list(durations)
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
        if self.shuffle:
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

"""asr.data: manifests, the dataset, collation and the length-bucketing batch sampler."""

from __future__ import annotations

import json
import re
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from asr.audio import load_audio
from asr.data import (
    Batch,
    BucketBatchSampler,
    SpeechDataset,
    Utterance,
    add_noise,
    change_speed,
    collate,
    coloured_noise,
    load_utterance_audio,
    read_manifest,
    total_hours,
    write_manifest,
)
from asr.text import CharTokenizer

SR = 16000
PCM16_STEP = 1.0 / 32768.0


# --------------------------------------------------------------------------- manifests


def test_manifest_round_trip(tmp_path):
    manifest = tmp_path / "sub" / "dir" / "train.jsonl"  # parent folders are created
    absolute = str(tmp_path / "audio" / "a.flac")
    utts = [
        Utterance(id="a", audio=absolute, duration=1.5, text="hello world", speaker="spk1"),
        Utterance(id="b", audio="wavs/b.wav", duration=2.25, text="don't", speaker=""),
        Utterance(id="c", audio=absolute, duration=0.75, text="segment", start=1.0, end=1.75),
        Utterance(id="d", audio="../up/d.wav", duration=3.0, text="", start=0.5),
        Utterance(id="e", audio=absolute, duration=3.0, text="caf\u00e9 \u65e5\u672c", end=3.0),
    ]
    write_manifest(manifest, utts)
    assert manifest.is_file()
    assert not list(manifest.parent.glob("*.tmp"))  # the atomic write leaves nothing behind
    lines = manifest.read_text(encoding="utf-8").splitlines()
    assert len(lines) == len(utts)
    first = json.loads(lines[0])
    assert "start" not in first and "end" not in first  # None fields are omitted
    assert "\u65e5" in lines[4]  # written as UTF-8, not escaped

    back = read_manifest(manifest)
    assert [u.id for u in back] == [u.id for u in utts]
    for original, read in zip(utts, back):
        assert read.duration == original.duration
        assert read.text == original.text
        assert read.speaker == original.speaker
        assert read.start == original.start
        assert read.end == original.end
    assert back[0].audio == absolute
    # Relative paths are resolved against the manifest's folder.
    assert Path(back[1].audio) == manifest.parent / "wavs" / "b.wav"
    assert Path(back[3].audio) == manifest.parent / "../up/d.wav"
    assert Path(back[1].audio).is_absolute()


def test_read_manifest_accepts_minimal_entries_and_blank_lines(tmp_path):
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(
        '{"id": 7, "audio": "/x.wav", "duration": 3}\n\n   \n{"id": "y", "audio": "/y.wav", "duration": "1.5"}\n',
        encoding="utf-8",
    )
    utts = read_manifest(manifest)
    assert len(utts) == 2
    assert utts[0].id == "7" and utts[0].duration == 3.0 and isinstance(utts[0].duration, float)
    assert utts[0].text == "" and utts[0].speaker == "" and utts[0].start is None and utts[0].end is None
    assert utts[1].duration == 1.5


def test_write_manifest_overwrites(tmp_path):
    manifest = tmp_path / "m.jsonl"
    write_manifest(manifest, [Utterance("a", "/a.wav", 1.0, "a"), Utterance("b", "/b.wav", 1.0, "b")])
    write_manifest(manifest, [Utterance("c", "/c.wav", 1.0, "c")])
    assert [u.id for u in read_manifest(manifest)] == ["c"]


@pytest.mark.parametrize(
    "bad_line",
    [
        "{not json",
        '{"audio": "/a.wav", "duration": 1.0}',  # no id
        '{"id": "x", "duration": 1.0}',  # no audio
        '{"id": "x", "audio": "/a.wav"}',  # no duration
        '{"id": "x", "audio": "/a.wav", "duration": "long"}',
        '{"id": "x", "audio": "/a.wav", "duration": null}',
        '["id", "audio"]',
        '"just a string"',
        "null",
    ],
)
def test_malformed_line_names_file_and_line(tmp_path, bad_line):
    manifest = tmp_path / "bad.jsonl"
    good = '{"id": "ok", "audio": "/ok.wav", "duration": 1.0, "text": "ok"}'
    manifest.write_text(f"{good}\n\n{bad_line}\n{good}\n", encoding="utf-8")
    with pytest.raises(ValueError) as info:
        read_manifest(manifest)
    assert f"{manifest}:3" in str(info.value)


@pytest.mark.parametrize("key, value", [("start", '"abc"'), ("end", '"late"'), ("start", "[1]")])
def test_malformed_segment_bounds_name_file_and_line(tmp_path, key, value):
    # "start" and "end" are numbers like "duration": a malformed one is reported at read time with
    # file:line, not later as a TypeError when the audio is loaded.
    manifest = tmp_path / "bad.jsonl"
    manifest.write_text(f'{{"id": "x", "audio": "/a.wav", "duration": 1.0, "{key}": {value}}}\n', encoding="utf-8")
    with pytest.raises(ValueError) as info:
        read_manifest(manifest)
    assert f"{manifest}:1" in str(info.value)


def test_missing_manifest(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_manifest(tmp_path / "nope.jsonl")


def test_total_hours():
    utts = [Utterance(str(i), "/a.wav", 1800.0, "") for i in range(3)]
    assert total_hours(utts) == pytest.approx(1.5)
    assert total_hours([]) == 0.0


# --------------------------------------------------------------------------- dataset


@pytest.fixture
def corpus(audio, tmp_path):
    """Four short files (one at 8 kHz, one stereo) and their utterances; audio paths are relative."""
    specs = [
        ("one.wav", audio.chirp(seconds=0.50, sr=SR), SR, "hello world"),
        ("two.flac", audio.tone(330.0, seconds=0.30, sr=SR), SR, "don't"),
        ("three.wav", audio.tone(440.0, seconds=0.40, sr=8000), 8000, "at eight k"),
        ("four.wav", np.stack([audio.tone(220.0, 0.25, SR), audio.chirp(seconds=0.25, sr=SR)], axis=1), SR, ""),
    ]
    utts = []
    for name, samples, sr, text in specs:
        audio.write(f"wavs/{name}", samples, sr)
        utts.append(Utterance(id=name.split(".")[0], audio=f"wavs/{name}", duration=len(samples) / sr, text=text))
    manifest = tmp_path / "corpus.jsonl"
    write_manifest(manifest, utts)
    return read_manifest(manifest)


def test_dataset_items(corpus):
    tok = CharTokenizer()
    ds = SpeechDataset(corpus, tok, SR)
    assert len(ds) == 4
    assert ds.durations == pytest.approx([0.5, 0.3, 0.4, 0.25])
    expected_lengths = [8000, 4800, 6400, 4000]
    for i, utt in enumerate(corpus):
        wave, labels, index = ds[i]
        assert index == i
        assert wave.dtype == torch.float32 and wave.dim() == 1
        assert abs(wave.shape[0] - expected_lengths[i]) <= 1
        torch.testing.assert_close(wave, load_audio(utt.audio, SR))
        assert labels.dtype == torch.long
        assert labels.tolist() == tok.encode(utt.text)
        assert tok.decode(labels.tolist()) == utt.text


def test_preload_matches_lazy_loading(corpus):
    tok = CharTokenizer()
    lazy = SpeechDataset(corpus, tok, SR)
    eager = SpeechDataset(corpus, tok, SR, preload=True, num_threads=2)
    assert eager.cache is not None and len(eager.cache) == len(corpus)
    assert all(c.dtype == torch.int16 for c in eager.cache)
    for i in range(len(corpus)):
        a, la, ia = lazy[i]
        b, lb, ib = eager[i]
        assert a.shape == b.shape
        assert b.dtype == torch.float32
        assert (a - b).abs().max() <= PCM16_STEP
        assert torch.equal(la, lb) and ia == ib == i


def test_preload_is_exact_for_16_bit_sources(audio):
    samples = audio.chirp(seconds=0.2, sr=SR)
    path = audio.write("pcm16.wav", samples, SR, subtype="PCM_16")
    utt = Utterance("x", str(path), 0.2, "x")
    lazy = SpeechDataset([utt], CharTokenizer(), SR)[0][0]
    eager = SpeechDataset([utt], CharTokenizer(), SR, preload=True)[0][0]
    assert torch.equal(lazy, eager)


def test_dataset_rejects_text_outside_alphabet(corpus):
    bad = Utterance(id="bad-utt", audio=corpus[0].audio, duration=0.5, text="Hello!")
    with pytest.raises(ValueError) as info:
        SpeechDataset([*corpus, bad], CharTokenizer(), SR)
    assert "bad-utt" in str(info.value)


# --------------------------------------------------------------------------- segments


@pytest.fixture
def long_file(audio):
    samples = audio.chirp(seconds=2.0, sr=SR)
    path = audio.write("long.wav", samples, SR, subtype="FLOAT")
    return path, samples


@pytest.mark.parametrize(
    "start, end, first, last",
    [(0.5, 1.25, 8000, 20000), (None, 0.5, 0, 8000), (1.5, None, 24000, 32000), (0.0, 2.0, 0, 32000), (None, None, 0, 32000)],
)
def test_segment_cutting(long_file, start, end, first, last):
    path, samples = long_file
    utt = Utterance("seg", str(path), 2.0, "x", start=start, end=end)
    wave = load_utterance_audio(utt, SR)
    assert wave.shape == (last - first,)
    np.testing.assert_array_equal(wave.numpy(), samples[first:last])
    # The dataset, lazy or preloaded, cuts the same way.
    for preload in (False, True):
        item = SpeechDataset([utt], CharTokenizer(), SR, preload=preload)[0][0]
        assert item.shape == (last - first,)
        assert (item - wave).abs().max() <= PCM16_STEP


def test_segment_of_8k_file_is_resampled(audio):
    samples = audio.tone(440.0, seconds=2.0, sr=8000)
    path = audio.write("long8k.wav", samples, 8000, subtype="FLOAT")
    utt = Utterance("seg", str(path), 0.75, "x", start=0.25, end=1.0)
    wave = load_utterance_audio(utt, SR)
    assert abs(wave.shape[0] - 0.75 * SR) <= 1


# --------------------------------------------------------------------------- collate


def test_collate_pads_and_records_lengths():
    items = [
        (torch.tensor([1.0, 2.0, 3.0]), torch.tensor([5, 6]), 4),
        (torch.tensor([4.0]), torch.tensor([7, 8, 9]), 0),
        (torch.tensor([5.0, 6.0]), torch.tensor([], dtype=torch.long), 2),
    ]
    batch = collate(items)
    assert isinstance(batch, Batch)
    assert torch.equal(batch.waves, torch.tensor([[1.0, 2.0, 3.0], [4.0, 0.0, 0.0], [5.0, 6.0, 0.0]]))
    assert batch.wave_lengths.tolist() == [3, 1, 2]
    assert torch.equal(batch.labels, torch.tensor([[5, 6, 0], [7, 8, 9], [0, 0, 0]]))
    assert batch.labels.dtype == torch.long
    assert batch.label_lengths.tolist() == [2, 3, 0]
    assert batch.indices == [4, 0, 2]

    moved = batch.to("cpu")
    assert torch.equal(moved.waves, batch.waves) and moved.indices == batch.indices


def test_collate_all_empty_labels():
    items = [(torch.ones(4), torch.tensor([], dtype=torch.long), 0), (torch.ones(2), torch.tensor([], dtype=torch.long), 1)]
    batch = collate(items)
    assert batch.labels.shape == (2, 1)
    assert batch.labels.dtype == torch.long
    assert (batch.labels == 0).all()
    assert batch.label_lengths.tolist() == [0, 0]


def test_collate_with_dataset(corpus):
    ds = SpeechDataset(corpus, CharTokenizer(), SR)
    batch = collate([ds[i] for i in range(len(ds))])
    assert batch.waves.shape[0] == 4
    assert batch.waves.shape[1] == int(batch.wave_lengths.max())
    for i in range(4):
        n = int(batch.wave_lengths[i])
        torch.testing.assert_close(batch.waves[i, :n], ds[i][0])
        assert (batch.waves[i, n:] == 0).all()
        assert batch.labels[i, : int(batch.label_lengths[i])].tolist() == ds[i][1].tolist()


# --------------------------------------------------------------------------- BucketBatchSampler


def random_durations(n: int = 300, seed: int = 0, low: float = 1.0, high: float = 20.0) -> list[float]:
    rng = random.Random(seed)
    return [rng.uniform(low, high) for _ in range(n)]


@pytest.mark.parametrize("max_batch_size", [0, 7])
@pytest.mark.parametrize("shuffle", [True, False])
def test_sampler_covers_every_index_once(max_batch_size, shuffle):
    durations = random_durations()
    sampler = BucketBatchSampler(durations, max_batch_seconds=100.0, max_batch_size=max_batch_size, shuffle=shuffle, seed=3)
    for epoch in range(3):
        sampler.set_epoch(epoch)
        batches = list(sampler)
        assert len(batches) == len(sampler)
        flat = [i for b in batches for i in b]
        assert sorted(flat) == list(range(len(durations)))
        assert all(len(b) > 0 for b in batches)
        if max_batch_size:
            assert max(len(b) for b in batches) <= max_batch_size


@pytest.mark.parametrize("max_batch_seconds", [15.0, 60.0, 200.0])
def test_sampler_respects_padded_size(max_batch_seconds):
    durations = random_durations(seed=1) + [25.0, 30.0]  # two longer than the smallest budget
    sampler = BucketBatchSampler(durations, max_batch_seconds=max_batch_seconds, seed=1)
    for epoch in range(3):
        for batch in sampler.epoch_batches(epoch):
            padded = max(durations[i] for i in batch) * len(batch)
            if len(batch) > 1:
                assert padded <= max_batch_seconds + 1e-9, (batch, padded)
    # An utterance longer than the budget still gets a batch of its own.
    alone = BucketBatchSampler([1.0, 50.0, 2.0], max_batch_seconds=10.0).epoch_batches(0)
    assert [1] in alone


def test_sampler_is_deterministic_for_seed_and_epoch():
    durations = random_durations()
    a = BucketBatchSampler(durations, 100.0, seed=5)
    b = BucketBatchSampler(durations, 100.0, seed=5)
    for epoch in (0, 1, 7):
        a.set_epoch(epoch)
        b.set_epoch(epoch)
        assert list(a) == list(b)
        assert list(a) == list(a)  # iterating twice gives the same epoch
    other_seed = BucketBatchSampler(durations, 100.0, seed=6)
    assert list(other_seed) != list(BucketBatchSampler(durations, 100.0, seed=5))


def test_sampler_order_changes_between_epochs():
    sampler = BucketBatchSampler(random_durations(), 100.0, seed=0)
    epochs = [sampler.epoch_batches(e) for e in range(4)]
    for e in range(1, 4):
        assert epochs[e] != epochs[0]
        # The batch composition changes too (jitter), not just the batch order.
        assert sorted(map(tuple, epochs[e])) != sorted(map(tuple, epochs[0]))


def test_sampler_without_shuffle_is_sorted_and_fixed():
    durations = random_durations()
    sampler = BucketBatchSampler(durations, 100.0, shuffle=False, seed=0)
    batches = sampler.epoch_batches(0)
    assert batches == sampler.epoch_batches(3)
    flat = [i for b in batches for i in b]
    assert [durations[i] for i in flat] == sorted(durations)


@pytest.mark.parametrize("start_batch", [0, 1, 5, 17])
def test_set_epoch_start_batch_yields_the_tail(start_batch):
    sampler = BucketBatchSampler(random_durations(), 100.0, seed=2)
    sampler.set_epoch(4)
    full = list(sampler)
    assert start_batch < len(full)
    sampler.set_epoch(4, start_batch=start_batch)
    tail = list(sampler)
    assert tail == full[start_batch:]
    assert len(sampler) == len(full) - start_batch
    # start_batch applies only to the epoch it was set for.
    sampler.set_epoch(5)
    assert len(list(sampler)) == len(sampler) == len(sampler.epoch_batches(5))


def test_start_batch_past_the_end():
    sampler = BucketBatchSampler(random_durations(50), 100.0)
    n = len(sampler)
    sampler.set_epoch(0, start_batch=n + 3)
    assert list(sampler) == []
    assert len(sampler) == 0


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_two_replicas_get_disjoint_equal_shares(seed):
    durations = random_durations(seed=seed)
    ranks = [BucketBatchSampler(durations, 60.0, seed=seed, num_replicas=2, rank=r) for r in (0, 1)]
    single = BucketBatchSampler(durations, 60.0, seed=seed)
    for epoch in range(3):
        for s in ranks:
            s.set_epoch(epoch)
        single.set_epoch(epoch)
        b0, b1 = list(ranks[0]), list(ranks[1])
        assert len(b0) == len(b1) == len(ranks[0]) == len(ranks[1])
        assert len(b0) > 0
        i0 = [i for b in b0 for i in b]
        i1 = [i for b in b1 for i in b]
        assert len(set(i0)) == len(i0) and len(set(i1)) == len(i1)
        assert not set(i0) & set(i1)
        # At most one batch of the whole epoch is dropped to keep the ranks equal.
        all_batches = list(single)
        assert len(all_batches) - (len(b0) + len(b1)) in (0, 1)
        assert set(map(tuple, b0 + b1)) <= set(map(tuple, all_batches))
        # Both ranks skip the same number of batches on resume.
        for s in ranks:
            s.set_epoch(epoch, start_batch=2)
        assert list(ranks[0]) == b0[2:] and list(ranks[1]) == b1[2:]


def test_padding_fraction_is_small():
    rng = random.Random(0)
    durations = [rng.uniform(2.0, 16.0) for _ in range(400)]
    sampler = BucketBatchSampler(durations, max_batch_seconds=60.0, seed=0)
    for epoch in range(5):
        fraction = sampler.padding_fraction(epoch)
        assert 0.0 <= fraction < 0.10, (epoch, fraction)
    # Without jitter the buckets are tighter still.
    tight = BucketBatchSampler(durations, max_batch_seconds=60.0, seed=0, jitter=0.0)
    assert tight.padding_fraction(0) < 0.03


def test_padding_fraction_definition():
    sampler = BucketBatchSampler([1.0, 2.0, 4.0, 4.0], max_batch_seconds=100.0, shuffle=False)
    assert sampler.epoch_batches(0) == [[0, 1, 2, 3]]
    assert sampler.padding_fraction() == pytest.approx(1 - 11.0 / 16.0)
    assert BucketBatchSampler([], 10.0).padding_fraction() == 0.0


# --------------------------------------------------------------------------- speed perturbation


def _peak_frequency(wave: torch.Tensor) -> float:
    spectrum = np.abs(np.fft.rfft(wave.numpy() * np.hanning(len(wave))))
    return float(np.argmax(spectrum)) * SR / len(wave)


def test_change_speed_factor_one_is_identity(audio):
    wave = torch.from_numpy(audio.chirp(seconds=0.3, sr=SR))
    assert torch.equal(change_speed(wave, 1.0, SR), wave)


@pytest.mark.parametrize("factor", [0.9, 1.1, 0.95])
def test_change_speed_scales_length_and_pitch(audio, factor):
    wave = torch.from_numpy(audio.tone(1000.0, seconds=1.0, sr=SR))
    out = change_speed(wave, factor, SR)
    assert abs(out.shape[0] - SR / factor) <= 1
    assert out.dtype == torch.float32
    # Played faster, the pitch rises with the tempo (sox `speed`, not `tempo`).
    assert _peak_frequency(out) == pytest.approx(1000.0 * factor, abs=3.0)
    assert float(out.abs().max()) == pytest.approx(0.5, abs=0.02)


@pytest.fixture
def many_utts(audio, tmp_path):
    """24 short chirps/tones with transcripts, lengths 0.2 to 0.66 s."""
    utts = []
    for i in range(24):
        seconds = 0.2 + 0.02 * i
        samples = audio.chirp(seconds=seconds, sr=SR) if i % 2 else audio.tone(200.0 + 30 * i, seconds=seconds, sr=SR)
        path = audio.write(f"many/{i}.wav", samples, SR, subtype="FLOAT")
        utts.append(Utterance(f"u{i}", str(path), len(samples) / SR, "abc"[: 1 + i % 3]))
    return utts


def test_speed_factors_are_deterministic_per_seed_epoch_and_index(many_utts):
    factors = [0.9, 1.0, 1.1]
    a = SpeechDataset(many_utts, CharTokenizer(), SR, speed_perturb=factors, seed=3)
    b = SpeechDataset(many_utts, CharTokenizer(), SR, speed_perturb=factors, seed=3, preload=True)
    other_seed = SpeechDataset(many_utts, CharTokenizer(), SR, speed_perturb=factors, seed=4)
    by_epoch = [[a.speed_factor(i, epoch) for i in range(len(a))] for epoch in range(3)]
    assert by_epoch[0] == [b.speed_factor(i, 0) for i in range(len(b))]
    assert by_epoch[0] != by_epoch[1] != by_epoch[2]
    assert by_epoch[0] != [other_seed.speed_factor(i, 0) for i in range(len(a))]
    assert set(by_epoch[0] + by_epoch[1]) == set(factors)  # every factor gets drawn
    # The items follow the factors, in any instance, and the labels stay as they were.
    for ds in (a, b):
        ds.set_epoch(1)
    for i in range(0, len(a), 5):
        wave_a, labels, index = a[i]
        wave_b, _, _ = b[i]
        clean = load_utterance_audio(many_utts[i], SR)
        assert abs(wave_a.shape[0] - len(clean) / by_epoch[1][i]) <= 1
        assert (wave_a - wave_b).abs().max() <= 4 * PCM16_STEP  # b was preloaded as 16-bit
        assert labels.tolist() == CharTokenizer().encode(many_utts[i].text) and index == i
        if by_epoch[1][i] == 1.0:
            torch.testing.assert_close(wave_a, clean)


def test_items_are_clean_until_an_epoch_is_set_and_without_perturbation(many_utts):
    perturbed = SpeechDataset(many_utts, CharTokenizer(), SR, speed_perturb=[0.8], noise_prob=1.0)
    plain = SpeechDataset(many_utts, CharTokenizer(), SR)  # as the dev set is built
    plain.set_epoch(5)
    for i in (0, 7):
        clean = load_utterance_audio(many_utts[i], SR)
        assert torch.equal(perturbed[i][0], clean)  # e.g. while normalization statistics are estimated
        assert torch.equal(plain[i][0], clean)
    perturbed.set_epoch(0)
    assert abs(perturbed[0][0].shape[0] - len(load_utterance_audio(many_utts[0], SR)) / 0.8) <= 1


def test_loader_workers_see_the_same_perturbation(many_utts):
    ds = SpeechDataset(many_utts, CharTokenizer(), SR, speed_perturb=[0.9, 1.1], noise_prob=0.5, seed=1)
    ds.set_epoch(2)
    sampler = BucketBatchSampler(ds.durations, max_batch_seconds=2.0, seed=1)
    sampler.set_epoch(2)
    loader = torch.utils.data.DataLoader(ds, batch_sampler=sampler, collate_fn=collate, num_workers=1)
    for batch in loader:
        expected = collate([ds[i] for i in batch.indices])
        assert torch.equal(batch.waves, expected.waves)
        assert torch.equal(batch.wave_lengths, expected.wave_lengths)


@pytest.mark.parametrize("max_batch_seconds", [1.0, 2.5])
def test_batches_respect_the_budget_after_slowing_down(many_utts, max_batch_seconds):
    ds = SpeechDataset(many_utts, CharTokenizer(), SR, speed_perturb=[0.8, 1.0, 1.2], seed=0)
    assert ds.durations == pytest.approx([u.duration / 0.8 for u in many_utts])
    sampler = BucketBatchSampler(ds.durations, max_batch_seconds, seed=0)
    over_nominal = False
    for epoch in range(3):
        ds.set_epoch(epoch)
        for indices in sampler.epoch_batches(epoch):
            batch = collate([ds[i] for i in indices])
            if len(indices) > 1:
                assert batch.waves.numel() / SR <= max_batch_seconds + len(indices) / SR  # +-1 sample each
            nominal = max(many_utts[i].duration for i in indices) * len(indices)
            over_nominal |= batch.waves.numel() / SR > nominal
    assert over_nominal  # the slowed-down audio really is longer than the manifest says


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(speed_perturb=[0.9, 0.0]), "speed_perturb"),
        (dict(speed_perturb=[-1.0]), "speed_perturb"),
        (dict(noise_prob=1.5), "noise_prob"),
        (dict(noise_snr_db=[10.0]), "noise_snr_db"),
        (dict(noise_snr_db=[30.0, 10.0]), "noise_snr_db"),
    ],
)
def test_bad_perturbation_settings_are_named(many_utts, kwargs, message):
    with pytest.raises(ValueError) as info:
        SpeechDataset(many_utts[:2], CharTokenizer(), SR, **kwargs)
    assert message in str(info.value)


# --------------------------------------------------------------------------- additive noise


def _snr_db(clean: torch.Tensor, noisy: torch.Tensor) -> float:
    noise = (noisy - clean).double()
    return 10 * float(torch.log10(clean.double().pow(2).mean() / noise.pow(2).mean()))


@pytest.mark.parametrize("snr_db", [0.0, 12.5, 30.0])
def test_add_noise_hits_the_snr(audio, snr_db):
    clean = torch.from_numpy(audio.chirp(seconds=0.5, sr=SR))
    noise = torch.from_numpy(coloured_noise(len(clean), "pink", np.random.default_rng(0))) * 3.0
    assert _snr_db(clean, add_noise(clean, noise, snr_db)) == pytest.approx(snr_db, abs=1e-3)
    silence = torch.zeros(100)
    assert torch.equal(add_noise(silence, noise[:100], 10.0), silence)  # no signal power: nothing to scale to


def test_coloured_noise_spectra():
    rng = np.random.default_rng(0)
    for colour in ("white", "pink"):
        noise = coloured_noise(32000, colour, rng)
        assert noise.dtype == np.float32 and noise.shape == (32000,)
        assert float(np.mean(noise**2)) == pytest.approx(1.0, rel=1e-4)
        power = np.abs(np.fft.rfft(noise)) ** 2
        low, high = power[10:1000].mean(), power[10000:11000].mean()  # bins: ~5-500 Hz vs 5-5.5 kHz at 16 kHz
        if colour == "white":
            assert 0.7 < low / high < 1.4
        else:
            assert low / high > 10.0  # 1/f: about 50x here
    with pytest.raises(ValueError):
        coloured_noise(10, "brown", rng)


def test_dataset_noise_snr_in_range_and_deterministic(many_utts):
    def noisy_set():
        ds = SpeechDataset(many_utts, CharTokenizer(), SR, noise_prob=0.5, noise_snr_db=[5.0, 15.0], seed=2)
        ds.set_epoch(0)
        return ds

    a, b = noisy_set(), noisy_set()
    noisy = 0
    for i in range(len(a)):
        clean = load_utterance_audio(many_utts[i], SR)
        wave = a[i][0]
        assert torch.equal(wave, b[i][0])
        assert wave.shape == clean.shape
        if not torch.equal(wave, clean):
            noisy += 1
            assert 5.0 - 1e-3 <= _snr_db(clean, wave) <= 15.0 + 1e-3
    assert 4 <= noisy <= 20  # about half of 24
    a.set_epoch(1)
    assert any(not torch.equal(a[i][0], b[i][0]) for i in range(len(a)))  # a new epoch, new noise


def test_noise_from_a_manifest_of_recordings(many_utts, audio, tmp_path):
    # A rising ramp as the "noise": a stretch of it is a straight line, so the residual shows that one
    # contiguous excerpt was mixed in, scaled to the SNR.
    ramp = np.linspace(-0.5, 0.5, 3 * SR).astype(np.float32)
    noise_path = audio.write("noise/ramp.wav", ramp, SR, subtype="FLOAT")
    short_path = audio.write("noise/short.wav", ramp[:100], SR, subtype="FLOAT")
    manifest = tmp_path / "noise.jsonl"
    write_manifest(manifest, [Utterance("ramp", str(noise_path), 3.0, "")])
    ds = SpeechDataset(many_utts, CharTokenizer(), SR, noise_prob=1.0, noise_snr_db=[10.0, 10.0],
                       noise_manifest=str(manifest), seed=0)
    ds.set_epoch(0)
    for i in (0, 11, 23):
        clean = load_utterance_audio(many_utts[i], SR)
        wave = ds[i][0]
        assert _snr_db(clean, wave) == pytest.approx(10.0, abs=1e-3)
        residual = (wave - clean).double().numpy()
        x = np.arange(len(residual))
        fit = np.polyval(np.polyfit(x, residual, 1), x)
        assert np.abs(residual - fit).max() < 1e-4 * np.abs(residual).max() + 1e-6
    # A recording shorter than the utterance is repeated to cover it.
    write_manifest(manifest, [Utterance("short", str(short_path), 100 / SR, "")])
    ds = SpeechDataset(many_utts, CharTokenizer(), SR, noise_prob=1.0, noise_manifest=str(manifest))
    ds.set_epoch(0)
    clean = load_utterance_audio(many_utts[5], SR)
    residual = ds[5][0] - clean
    assert residual.shape == clean.shape
    torch.testing.assert_close(residual[:100], residual[100:200])
    with pytest.raises(FileNotFoundError):
        SpeechDataset(many_utts, CharTokenizer(), SR, noise_prob=1.0, noise_manifest=str(tmp_path / "none.jsonl"))


def test_hold_out_speakers_moves_whole_speakers_and_names_bad_counts(tmp_path, capsys):
    from asr.cli import main
    from asr.data import hold_out_speakers

    utts = [Utterance(f"s{s}-{i}", f"/a/{s}-{i}.wav", 1.0, "x", speaker=f"s{s}") for s in range(6) for i in range(3)]
    rest, held = hold_out_speakers(utts, 2, seed=3)
    assert len({u.speaker for u in held}) == 2 and len(held) == 6 and len(rest) == 12
    assert not {u.speaker for u in held} & {u.speaker for u in rest}
    assert hold_out_speakers(list(reversed(utts)), 2, seed=3)[1] == list(reversed(held))  # order-free draw
    with pytest.raises(ValueError, match="cannot hold out 6 of 6 speakers"):
        hold_out_speakers(utts, 6)
    write_manifest(tmp_path / "m.jsonl", utts)
    assert main(["split", str(tmp_path / "m.jsonl"), "--held-out-speakers", "1", "--out-rest", str(tmp_path / "r.jsonl"),
                 "--out-held", str(tmp_path / "h.jsonl")]) == 0
    assert len(read_manifest(tmp_path / "h.jsonl")) == 3 and len(read_manifest(tmp_path / "r.jsonl")) == 15
    assert "3 utterances, 1 speakers" in capsys.readouterr().out


def test_short_first_epochs_order_batches_by_length_then_shuffle():
    durations = [float(d) for d in range(1, 41)]
    sampler = BucketBatchSampler(durations, max_batch_seconds=40.0, seed=1, jitter=0.0, short_first_epochs=1)
    first, second = sampler.epoch_batches(0), sampler.epoch_batches(1)
    longest = [max(durations[i] for i in batch) for batch in first]
    assert longest == sorted(longest)
    plain = BucketBatchSampler(durations, max_batch_seconds=40.0, seed=1, jitter=0.0)
    assert plain.epoch_batches(1) == second  # later epochs as without the option
    assert sorted(map(sorted, plain.epoch_batches(0))) == sorted(map(sorted, first))  # same batches, other order
    assert plain.epoch_batches(0) != first


@pytest.mark.parametrize("text, problem", [("null", '"text" is null, not a string'), ("42", '"text" is 42, not a string'),
                                           ('["a"]', '"text" is \\["a"\\], not a string')])
def test_a_text_that_is_not_a_string_is_refused_with_file_and_line(tmp_path, text, problem):
    """Issue 29: `"text": null` became the transcript "None" and a later error about the character 'N'."""
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(f'{{"id": "a", "audio": "/a.wav", "duration": 1, "text": "ok"}}\n'
                        f'{{"id": "b", "audio": "/b.wav", "duration": 1, "text": {text}}}\n', encoding="utf-8")
    for need_text in (False, True):
        with pytest.raises(ValueError, match=f"{re.escape(str(manifest))}:2: {problem}"):
            read_manifest(manifest, need_text=need_text)


def test_a_row_without_text_is_refused_where_text_is_needed(tmp_path):
    """Training, dev sets and LM text need each line's transcript (a missing one was trained as an
    empty text); decoding unlabeled audio does not."""
    manifest = tmp_path / "m.jsonl"
    manifest.write_text('{"id": "a", "audio": "/a.wav", "duration": 1, "text": "ok"}\n'
                        '{"id": "b", "audio": "/b.wav", "duration": 1, "text": ""}\n'
                        '{"id": "c", "audio": "/c.wav", "duration": 1}\n', encoding="utf-8")
    with pytest.raises(ValueError, match=f'{re.escape(str(manifest))}:3: no "text": every utterance for training'):
        read_manifest(manifest, need_text=True)
    assert [u.text for u in read_manifest(manifest)] == ["ok", "", ""]


def test_train_refuses_a_manifest_without_text_or_without_entries(tmp_path, capsys):
    from asr.cli import main

    rows = tmp_path / "rows.jsonl"
    rows.write_text('{"id": "c", "audio": "/c.wav", "duration": 1}\n', encoding="utf-8")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n", encoding="utf-8")
    for manifest, message in [(rows, f'{rows}:1: no "text"'), (empty, f"{empty}: the training manifest holds no utterances")]:
        assert main(["train", "--train", str(manifest), "--dev", str(manifest), "--out", str(tmp_path / "exp")]) == 2
        assert message in capsys.readouterr().err
    assert not (tmp_path / "exp").exists()
    rows.write_text('{"id": "c", "audio": "/c.wav", "duration": 40, "text": "x"}\n', encoding="utf-8")
    assert main(["train", "--train", str(rows), "--dev", str(rows), "--out", str(tmp_path / "exp2"),
                 "train.max_duration=30"]) == 2
    assert ("no training utterances left: all 1 are longer than train.max_duration (30 s; the shortest lasts 40.0 s)"
            in capsys.readouterr().err)

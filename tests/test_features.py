"""asr.frontend.logmel and asr.frontend.specaug: log-mel against librosa, normalization statistics and SpecAugment."""

from __future__ import annotations

import librosa
import numpy as np
import pytest
import torch
from torch.nn.utils.rnn import pad_sequence

from asr.frontend import FeatureConfig
from asr.frontend.logmel import GlobalNormalizer, LogMel, RunningStats, frame_mask
from asr.frontend.specaug import SpecAugmentConfig, spec_augment, time_warp

SR = 16000
HOP = 160


@pytest.fixture(scope="module")
def logmel() -> LogMel:
    return LogMel(FeatureConfig())


def librosa_logmel(y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(frames, n_mels) log-mel and power as librosa computes them with the documented settings."""
    power = librosa.feature.melspectrogram(
        y=y, sr=SR, n_fft=400, hop_length=HOP, n_mels=80, center=True, pad_mode="reflect",
        power=2.0, htk=False, norm="slaney",
    ).T
    return np.log(np.maximum(power, 1e-10)), power


def speechlike(n: int, seed: int = 0) -> np.ndarray:
    """A chirp plus a little noise: energy in every mel band."""
    rng = np.random.default_rng(seed)
    t = np.arange(n) / SR
    y = 0.3 * np.sin(2 * np.pi * (100 * t + 1500 * t * t)) + 0.05 * rng.standard_normal(n)
    return y.astype(np.float32)


def sine(n: int, freq: float = 440.0) -> np.ndarray:
    return (0.5 * np.sin(2 * np.pi * freq * np.arange(n) / SR)).astype(np.float32)


# --------------------------------------------------------------------------- LogMel


@pytest.mark.parametrize("n", [401, 4321, 12345, 16000])
@pytest.mark.parametrize("signal", ["speechlike", "sine"])
def test_logmel_matches_librosa(logmel, n, signal):
    y = speechlike(n) if signal == "speechlike" else sine(n)
    ref, power = librosa_logmel(y)
    feats, frames = logmel(torch.from_numpy(y)[None], torch.tensor([n]))
    assert feats.shape == (1, *ref.shape)
    assert feats.dtype == torch.float32
    assert int(frames[0]) == ref.shape[0]
    got = feats[0].numpy()
    audible = power > 1e-6
    assert audible.any()
    np.testing.assert_allclose(got[audible], ref[audible], atol=1e-3)
    # Very quiet cells: close in relative power terms (log differences are relative errors).
    quiet = ~audible
    if quiet.any():
        np.testing.assert_allclose(np.exp(got[quiet]), power[quiet].astype(np.float32), rtol=0.05, atol=1e-9)


def test_logmel_of_silence_is_clamped(logmel):
    feats, _ = logmel(torch.zeros(1, 1600), torch.tensor([1600]))
    torch.testing.assert_close(feats, torch.full_like(feats, float(np.log(1e-10))))


@pytest.mark.parametrize("n", [401, 1599, 1600, 1601, 16000, 16159, 16160])
def test_logmel_frame_count(logmel, n):
    feats, frames = logmel(torch.randn(1, n) * 0.1, torch.tensor([n]))
    assert feats.shape[1] == n // HOP + 1
    assert int(frames[0]) == n // HOP + 1
    assert feats.shape[2] == 80
    assert logmel.num_frames(torch.tensor([n])).item() == n // HOP + 1


def _padded_batch(lengths: list[int]):
    waves = [torch.from_numpy(speechlike(n, seed=i)) for i, n in enumerate(lengths)]
    return waves, pad_sequence(waves, batch_first=True), torch.tensor(lengths)


def test_logmel_batched_frame_counts(logmel):
    lengths = [16000, 9000, 4321, 401]
    waves, batch, lens = _padded_batch(lengths)
    feats, frames = logmel(batch, lens)
    assert feats.shape == (4, 16000 // HOP + 1, 80)
    assert frames.tolist() == [n // HOP + 1 for n in lengths]


def test_logmel_batched_equals_single_on_interior_frames(logmel):
    """Frames whose analysis window lies wholly inside the utterance do not see the padding."""
    lengths = [16000, 9000, 4321, 1000]
    waves, batch, lens = _padded_batch(lengths)
    feats, frames = logmel(batch, lens)
    for i, wave in enumerate(waves):
        single, single_frames = logmel(wave[None], lens[i : i + 1])
        assert int(single_frames[0]) == int(frames[i]) == single.shape[1]
        interior = (lengths[i] - 400 // 2) // HOP + 1  # frames t with t*hop + n_fft/2 <= length
        torch.testing.assert_close(feats[i, :interior], single[0, :interior], atol=1e-4, rtol=1e-4)


def test_logmel_batched_equals_single_on_all_valid_frames(logmel):
    # Each utterance is reflect-padded at its own end, not at the end of the padded batch, so its
    # last valid frames (within n_fft/2 of its end) are the same batched as alone.
    lengths = [16000, 9000, 4321]
    waves, batch, lens = _padded_batch(lengths)
    feats, frames = logmel(batch, lens)
    for i, wave in enumerate(waves):
        single, _ = logmel(wave[None], lens[i : i + 1])
        valid = int(frames[i])
        torch.testing.assert_close(
            feats[i, :valid], single[0], atol=1e-4, rtol=1e-4,
            msg=lambda m, i=i: f"utterance {i} (length {lengths[i]}) differs when batched: {m}",
        )


# --------------------------------------------------------------------------- normalization


def _random_padded_feats(seed: int, batch: int = 4, max_frames: int = 50, dim: int = 8):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(5, max_frames + 1, (batch,), generator=g)
    lengths[0] = max_frames
    scale = torch.linspace(0.5, 4.0, dim)
    offset = torch.linspace(-10.0, 3.0, dim)
    feats = torch.randn(batch, max_frames, dim, generator=g) * scale + offset
    mask = frame_mask(lengths, max_frames)
    feats[~mask] = 1e4  # garbage in the padding that must not count
    return feats, lengths, mask


def test_frame_mask():
    mask = frame_mask(torch.tensor([3, 0, 5]), 5)
    expected = torch.tensor([[1, 1, 1, 0, 0], [0, 0, 0, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    assert torch.equal(mask, expected)


def test_running_stats_ignore_padding_and_match_direct_computation():
    stats = RunningStats(8)
    valid_rows = []
    for seed in range(3):
        feats, lengths, mask = _random_padded_feats(seed)
        stats.add(feats, lengths)
        valid_rows.append(feats[mask])
    everything = torch.cat(valid_rows).double()
    assert stats.count == everything.shape[0]
    mean, std = stats.mean_std()
    assert mean.dtype == torch.float32 and std.dtype == torch.float32
    torch.testing.assert_close(mean, everything.mean(0).float(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(std, everything.std(0, unbiased=False).float(), atol=1e-5, rtol=1e-5)


def test_running_stats_padding_values_do_not_matter():
    feats, lengths, mask = _random_padded_feats(7)
    a, b = RunningStats(8), RunningStats(8)
    a.add(feats, lengths)
    other = feats.clone()
    other[~mask] = -123.0
    b.add(other, lengths)
    for x, y in zip(a.mean_std(), b.mean_std()):
        torch.testing.assert_close(x, y)


def test_running_stats_without_frames_raises():
    with pytest.raises(ValueError):
        RunningStats(4).mean_std()


def test_global_normalizer_gives_zero_mean_unit_std():
    stats = RunningStats(8)
    batches = [_random_padded_feats(seed) for seed in range(3)]
    for feats, lengths, _ in batches:
        stats.add(feats, lengths)
    normalizer = GlobalNormalizer(8)
    normalizer.set_stats(*stats.mean_std())
    normalized = torch.cat([normalizer(feats)[mask] for feats, _, mask in batches]).double()
    torch.testing.assert_close(normalized.mean(0), torch.zeros(8, dtype=torch.float64), atol=1e-4, rtol=0)
    torch.testing.assert_close(normalized.std(0, unbiased=False), torch.ones(8, dtype=torch.float64), atol=1e-4, rtol=0)


def test_global_normalizer_defaults_identity_and_buffers():
    normalizer = GlobalNormalizer(5)
    x = torch.randn(2, 3, 5)
    torch.testing.assert_close(normalizer(x), x)
    state = normalizer.state_dict()
    assert set(state) == {"mean", "std"}


def test_global_normalizer_clamps_zero_std():
    normalizer = GlobalNormalizer(3)
    normalizer.set_stats(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([0.0, 2.0, 1.0]))
    out = normalizer(torch.tensor([[[1.0, 4.0, 3.0]]]))
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, torch.tensor([[[0.0, 1.0, 0.0]]]))


# --------------------------------------------------------------------------- SpecAugment


def _augment_input(batch: int = 6, frames: int = 300, dims: int = 80, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    feats = torch.randn(batch, frames, dims, generator=g) + 5.0  # no exact zeros in the input
    assert (feats != 0).all()
    lengths = torch.linspace(frames, frames // 4, batch).long()
    return feats, lengths


def test_spec_augment_zero_masks_is_identity():
    feats, lengths = _augment_input()
    config = SpecAugmentConfig(freq_masks=0, time_masks=0)
    out = spec_augment(feats, lengths, config, torch.Generator().manual_seed(0))
    assert torch.equal(out, feats)
    assert out is not feats
    # Zero widths are identity too.
    config = SpecAugmentConfig(freq_width=0, time_width=0.0)
    assert torch.equal(spec_augment(feats, lengths, config, torch.Generator().manual_seed(0)), feats)


@pytest.mark.parametrize("seed", range(5))
def test_spec_augment_only_zeroes_values(seed):
    feats, lengths = _augment_input(seed=seed)
    config = SpecAugmentConfig(freq_masks=2, freq_width=27, time_masks=2, time_width=0.05, max_time_width=40)
    out = spec_augment(feats, lengths, config, torch.Generator().manual_seed(seed))
    assert out.shape == feats.shape
    unchanged = out == feats
    zeroed = out == 0
    assert (unchanged | zeroed).all()
    assert zeroed.any()  # with these settings something is masked
    assert unchanged.any()
    # The input is not modified in place.
    assert (feats != 0).all()


@pytest.mark.parametrize("seed", range(10))
def test_spec_augment_time_mask_width_limits(seed):
    feats, lengths = _augment_input(batch=8, frames=1000, dims=10, seed=seed)
    lengths = torch.tensor([1000, 800, 600, 400, 200, 100, 40, 10])
    config = SpecAugmentConfig(freq_masks=0, time_masks=1, time_width=0.05, max_time_width=40)
    out = spec_augment(feats, lengths, config, torch.Generator().manual_seed(seed))
    masked_frames = (out == 0).all(dim=2)  # (B, T)
    for i, length in enumerate(lengths.tolist()):
        count = int(masked_frames[i].sum())
        assert count <= 0.05 * length, (i, length, count)
        assert count <= 40
        positions = masked_frames[i].nonzero().flatten()
        if count:
            # One mask: one contiguous run inside the valid frames.
            assert int(positions[-1] - positions[0]) + 1 == count
            assert int(positions[-1]) < length


def test_spec_augment_time_masks_reach_their_limits():
    """Over many draws, widths use the allowed range: the per-utterance and absolute caps both bind."""
    feats = torch.ones(2, 2000, 4)
    lengths = torch.tensor([2000, 300])  # 5%: 100 frames capped to 40; 15 frames
    config = SpecAugmentConfig(freq_masks=0, time_masks=1, time_width=0.05, max_time_width=40)
    g = torch.Generator().manual_seed(1)
    widest = [0, 0]
    for _ in range(200):
        masked = (spec_augment(feats, lengths, config, g) == 0).all(dim=2).sum(dim=1)
        widest = [max(w, int(m)) for w, m in zip(widest, masked)]
    assert widest == [40, 15]


@pytest.mark.parametrize("seed", range(5))
def test_spec_augment_multiple_time_masks_total_bound(seed):
    feats, _ = _augment_input(batch=4, frames=500, dims=4, seed=seed)
    lengths = torch.tensor([500, 400, 200, 60])
    config = SpecAugmentConfig(freq_masks=0, time_masks=3, time_width=0.05, max_time_width=40)
    out = spec_augment(feats, lengths, config, torch.Generator().manual_seed(seed))
    masked_frames = (out == 0).all(dim=2)
    for i, length in enumerate(lengths.tolist()):
        assert int(masked_frames[i].sum()) <= 3 * min(int(0.05 * length), 40)
        assert not masked_frames[i, length:].any()


@pytest.mark.parametrize("seed", range(5))
def test_spec_augment_frequency_masks_cover_whole_time_span(seed):
    feats, lengths = _augment_input(batch=4, frames=120, dims=80, seed=seed)
    config = SpecAugmentConfig(freq_masks=1, freq_width=27, time_masks=0)
    out = spec_augment(feats, lengths, config, torch.Generator().manual_seed(seed))
    zero = out == 0  # (B, T, F)
    for i in range(out.shape[0]):
        column_zero = zero[i].all(dim=0)  # bins zero over every frame
        column_any = zero[i].any(dim=0)
        assert torch.equal(column_zero, column_any), "a frequency mask must cover every frame"
        bins = column_zero.nonzero().flatten()
        assert len(bins) <= 27
        if len(bins):
            assert int(bins[-1] - bins[0]) + 1 == len(bins)  # one contiguous band


def test_spec_augment_masks_differ_between_utterances():
    feats = torch.ones(16, 200, 80)
    lengths = torch.full((16,), 200)
    out = spec_augment(feats, lengths, SpecAugmentConfig(), torch.Generator().manual_seed(3))
    patterns = {tuple((out[i] == 0).flatten().tolist()) for i in range(16)}
    assert len(patterns) > 1


def test_spec_augment_generator_is_deterministic():
    feats, lengths = _augment_input()
    config = SpecAugmentConfig()
    a = spec_augment(feats, lengths, config, torch.Generator().manual_seed(42))
    b = spec_augment(feats, lengths, config, torch.Generator().manual_seed(42))
    c = spec_augment(feats, lengths, config, torch.Generator().manual_seed(43))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    # One generator used twice advances: two different draws.
    g = torch.Generator().manual_seed(42)
    first = spec_augment(feats, lengths, config, g)
    second = spec_augment(feats, lengths, config, g)
    assert torch.equal(first, a)
    assert not torch.equal(first, second)


# --------------------------------------------------------------------------- time warping


def _ramp_batch(lengths: list[int], frames: int | None = None, dims: int = 3, padding: float = -7.0):
    """(B, T, dims) where frame t holds the value t, and `padding` past each utterance's length."""
    frames = frames or max(lengths)
    feats = torch.arange(frames, dtype=torch.float32).view(1, frames, 1).repeat(len(lengths), 1, dims)
    lengths = torch.tensor(lengths)
    feats[~frame_mask(lengths, frames)] = padding
    return feats, lengths


WARP_ONLY = dict(freq_masks=0, time_masks=0)


def test_time_warp_off_is_identity_and_draws_nothing():
    feats, lengths = _augment_input()
    g = torch.Generator().manual_seed(0)
    before = g.get_state()
    out = spec_augment(feats, lengths, SpecAugmentConfig(time_warp=0, **WARP_ONLY), g)
    assert torch.equal(out, feats)
    # No draws: runs and checkpoints made before time warping existed resume on the same masks.
    assert torch.equal(g.get_state(), before)


@pytest.mark.parametrize("seed", range(5))
def test_time_warp_keeps_shape_ends_and_padding(seed):
    lengths = [300, 211, 120, 40, 9, 4]
    feats, lens = _ramp_batch(lengths)
    out = spec_augment(feats, lens, SpecAugmentConfig(time_warp=20, **WARP_ONLY), torch.Generator().manual_seed(seed))
    assert out.shape == feats.shape
    assert lens.tolist() == lengths  # lengths are not touched
    for i, n in enumerate(lengths):
        assert torch.equal(out[i, n:], feats[i, n:]), "frames past the length must stay as they were"
        assert float(out[i, 0, 0]) == 0.0 and float(out[i, n - 1, 0]) == pytest.approx(n - 1)
    assert torch.equal(out[5], feats[5])  # 4 frames: too short to warp
    assert any(not torch.equal(out[i], feats[i]) for i in range(5))  # a shift of 0 is a legal draw for one


@pytest.mark.parametrize("seed", range(10))
def test_time_warp_of_a_ramp_stays_monotonic_and_moves_at_most_the_warp(seed):
    lengths = [500, 300, 101, 30, 7, 5]
    feats, lens = _ramp_batch(lengths)
    out = time_warp(feats, lens, 40, torch.rand(6, generator=torch.Generator().manual_seed(seed)),
                    torch.rand(6, generator=torch.Generator().manual_seed(100 + seed)))
    for i, n in enumerate(lengths):
        values = out[i, :n, 0]
        assert (values[1:] >= values[:-1]).all(), f"utterance {i}: the warp must not reorder time"
        assert (values[1:] > values[:-1]).all()  # strictly: no frame is dropped or repeated as a plateau
        # Each output frame t shows the input near t: by at most min(40, (n - 3) // 2) frames.
        shift = (values - torch.arange(n)).abs().max()
        assert float(shift) <= min(40, max(0, (n - 3) // 2)) + 1e-4
        assert torch.equal(out[i, :n, 0], out[i, :n, 2])  # every feature bin is warped alike


def test_time_warp_uses_the_whole_range():
    """Over many draws the centre moves by up to W in both directions, and by less too."""
    feats, lens = _ramp_batch([400])
    g = torch.Generator().manual_seed(0)
    shifts = []
    for _ in range(200):
        out = spec_augment(feats, lens, SpecAugmentConfig(time_warp=10, **WARP_ONLY), g)
        displacement = out[0, :, 0] - torch.arange(400)
        shifts.append(float(displacement[displacement.abs().argmax()]))
    assert max(shifts) == pytest.approx(10, abs=1e-4) and min(shifts) == pytest.approx(-10, abs=1e-4)
    assert any(0 < abs(s) < 10 for s in shifts)


def test_time_warp_is_deterministic_for_a_seeded_generator():
    feats, lengths = _augment_input()
    config = SpecAugmentConfig(time_warp=5)
    a = spec_augment(feats, lengths, config, torch.Generator().manual_seed(7))
    b = spec_augment(feats, lengths, config, torch.Generator().manual_seed(7))
    c = spec_augment(feats, lengths, config, torch.Generator().manual_seed(8))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_time_warp_then_masks_still_zero_whole_bands():
    feats, lengths = _augment_input(batch=4, frames=200, dims=20)
    out = spec_augment(feats, lengths, SpecAugmentConfig(time_warp=5, freq_masks=1, freq_width=5, time_masks=0),
                       torch.Generator().manual_seed(2))
    zero = out == 0
    assert zero.any()
    assert torch.equal(zero.all(dim=1), zero.any(dim=1))  # masked bins are zero over all frames

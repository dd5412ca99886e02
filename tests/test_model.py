"""asr.model: CTCModel shapes, output lengths, padding invariance and a few training steps."""

from __future__ import annotations

import pytest
import torch
from torch.nn.utils.rnn import pad_sequence

from asr.frontend import FeatureConfig
from asr.model import CTCModel, ModelConfig, count_parameters

SR = 16000
VOCAB = 29
# Lengths chosen so that feature frame counts (n // 160 + 1) are both odd and even: 101, 57, 28, 29, 3.
LENGTHS = [16000, 9000, 4321, 4480, 400]

SUBSAMPLINGS = [("conv", 2), ("conv", 4), ("stack", 3)]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """These models are tiny: one intra-op thread is as fast and does not spin on a busy machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def make_model(subsampling="stack", factor=3, rnn_type="lstm", bidirectional=True, num_layers=2, hidden=16, dropout=0.1, seed=0):
    torch.manual_seed(seed)
    config = ModelConfig(
        subsampling=subsampling,
        subsampling_factor=factor,
        conv_channels=4,
        rnn_type=rnn_type,
        bidirectional=bidirectional,
        hidden_size=hidden,
        num_layers=num_layers,
        dropout=dropout,
    )
    return CTCModel(FeatureConfig(), config, VOCAB)


def make_batch(lengths=LENGTHS, seed=0):
    g = torch.Generator().manual_seed(seed)
    waves = [torch.randn(n, generator=g) * 0.1 for n in lengths]
    return waves, pad_sequence(waves, batch_first=True), torch.tensor(lengths)


def expected_frames(num_samples: int, subsampling: str, factor: int) -> int:
    frames = num_samples // 160 + 1
    if subsampling == "conv":
        for _ in range(factor // 2):
            frames = (frames + 1) // 2  # ceil(T / 2)
        return frames
    return max(frames // factor, 1)


# --------------------------------------------------------------------------- shapes and lengths


@pytest.mark.parametrize("subsampling, factor", SUBSAMPLINGS)
@pytest.mark.parametrize("rnn_type", ["lstm", "gru", "rnn"])
@pytest.mark.parametrize("bidirectional", [True, False])
def test_output_shapes_and_lengths(subsampling, factor, rnn_type, bidirectional):
    model = make_model(subsampling, factor, rnn_type, bidirectional, num_layers=1).eval()
    _, waves, lengths = make_batch()
    with torch.no_grad():
        log_probs, out_lengths = model(waves, lengths)
    expected = [expected_frames(n, subsampling, factor) for n in LENGTHS]
    assert log_probs.shape == (len(LENGTHS), max(expected), VOCAB)
    assert log_probs.dtype == torch.float32
    assert out_lengths.tolist() == expected
    assert out_lengths.tolist() == [model.output_frames(n) for n in LENGTHS]
    assert model.output.in_features == 16 * (2 if bidirectional else 1)
    assert torch.isfinite(log_probs).all()
    # Log-probabilities: every frame is a distribution over the vocabulary.
    sums = log_probs.exp().sum(dim=-1)
    torch.testing.assert_close(sums, torch.ones_like(sums), atol=1e-5, rtol=0)
    assert (log_probs <= 1e-6).all()


@pytest.mark.parametrize("subsampling, factor", SUBSAMPLINGS + [("stack", 1), ("stack", 2), ("stack", 6)])
def test_output_frames_formula(subsampling, factor):
    model = make_model(subsampling, factor, num_layers=1)
    for n in [1, 159, 160, 161, 400, 479, 480, 481, 4321, 16000, 16159, 16160, 160000]:
        assert model.output_frames(n) == expected_frames(n, subsampling, factor), n


@pytest.mark.parametrize("subsampling, factor", SUBSAMPLINGS)
def test_output_lengths_match_output_frames_per_utterance(subsampling, factor):
    model = make_model(subsampling, factor, num_layers=1).eval()
    lengths = [401, 560, 641, 1120, 1599, 1600, 3200, 3359]
    _, waves, lens = make_batch(lengths, seed=1)
    with torch.no_grad():
        log_probs, out_lengths = model(waves, lens)
        assert out_lengths.tolist() == [model.output_frames(n) for n in lengths]
        assert log_probs.shape[1] == max(out_lengths.tolist())
        for i, n in enumerate(lengths):
            single, single_len = model(waves[i : i + 1, :n], lens[i : i + 1])
            assert int(single_len[0]) == model.output_frames(n) == single.shape[1]


def test_frame_shift_and_parameter_count():
    assert make_model("conv", 4).frame_shift == pytest.approx(0.04)
    assert make_model("conv", 2).frame_shift == pytest.approx(0.02)
    assert make_model("stack", 3).frame_shift == pytest.approx(0.03)
    model = make_model("stack", 3, num_layers=1)
    assert count_parameters(model) == sum(p.numel() for p in model.parameters())
    assert count_parameters(model) > 0
    # The normalizer statistics are buffers (in the state dict), not trained parameters.
    assert "normalizer.mean" in model.state_dict()
    assert all("normalizer" not in name for name, _ in model.named_parameters())


def test_invalid_configurations():
    with pytest.raises(ValueError, match="subsampling"):
        make_model("pool", 2)
    with pytest.raises(ValueError, match="factor"):
        make_model("conv", 3)
    with pytest.raises(ValueError, match="rnn_type"):
        make_model(rnn_type="transformer")


# --------------------------------------------------------------------------- padding invariance


@pytest.mark.parametrize("subsampling, factor", SUBSAMPLINGS)
def test_padding_does_not_change_outputs(subsampling, factor):
    # Nothing of the batch's padding reaches a shorter utterance's outputs: the features are padded
    # per utterance (tests/test_features.py::test_logmel_batched_equals_single_on_all_valid_frames)
    # and the subsamplers and RNN ignore frames past each length (test_encode_ignores_padding_content).
    model = make_model(subsampling, factor).eval()
    waves, batch, lengths = make_batch()
    with torch.no_grad():
        log_probs, out_lengths = model(batch, lengths)
        for i, wave in enumerate(waves):
            single, single_len = model(wave[None], lengths[i : i + 1])
            n = int(single_len[0])
            assert int(out_lengths[i]) == n
            torch.testing.assert_close(
                log_probs[i, :n], single[0], atol=1e-5, rtol=0,
                msg=lambda m, i=i: f"utterance {i} ({LENGTHS[i]} samples) changes when batched: {m}",
            )


@pytest.mark.parametrize("pad_value", [0.0, 3.0])
@pytest.mark.parametrize(
    "subsampling, factor, rnn_type",
    [("conv", 2, "lstm"), ("conv", 4, "lstm"), ("stack", 3, "lstm"), ("stack", 3, "gru"), ("stack", 2, "rnn")],
)
def test_encode_ignores_padding_content(subsampling, factor, rnn_type, pad_value):
    """Features computed per utterance, then padded: encode() must give each utterance the output it
    gets alone, whatever the padding holds (packing hides it from the RNN in both directions).

    The cases that would catch a leak: the strided convolutions must zero the frames past each
    utterance's length before each layer, or with an odd frame count the last output frame's 3x3
    kernel reads padding (with factor 4 even zero padding, which layer 1 turns into GELU(bias) != 0;
    with factor 2 any non-zero padding).
    """
    model = make_model(subsampling, factor, rnn_type).eval()
    waves, _, lengths = make_batch()
    with torch.no_grad():
        singles = [model.features(w[None], lengths[i : i + 1]) for i, w in enumerate(waves)]
        frames = torch.tensor([int(l[0]) for _, l in singles])
        feats = pad_sequence([f[0] for f, _ in singles], batch_first=True, padding_value=pad_value)
        log_probs, out_lengths = model.encode(feats, frames)
        for i, (f, l) in enumerate(singles):
            single, single_len = model.encode(f, l)
            n = int(single_len[0])
            assert int(out_lengths[i]) == n
            torch.testing.assert_close(
                log_probs[i, :n], single[0], atol=1e-5, rtol=0,
                msg=lambda m, i=i: f"utterance {i} ({int(frames[i])} frames) changes when batched: {m}",
            )


# --------------------------------------------------------------------------- training


@pytest.mark.parametrize("subsampling, factor", [("stack", 3), ("conv", 4)])
def test_a_few_steps_lower_the_ctc_loss(subsampling, factor):
    model = make_model(subsampling, factor, num_layers=1, hidden=32, dropout=0.0, seed=0).train()
    g = torch.Generator().manual_seed(0)
    lengths = torch.tensor([8000, 6400, 4800])
    waves = torch.randn(3, 8000, generator=g) * 0.1
    for i, n in enumerate(lengths.tolist()):
        waves[i, n:] = 0
    labels = torch.tensor([[8, 5, 12, 12, 15], [23, 15, 18, 12, 0], [4, 1, 0, 0, 0]])  # padded with 0
    label_lengths = torch.tensor([5, 4, 2])
    ctc = torch.nn.CTCLoss(blank=0, zero_infinity=False)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)

    def loss_now():
        log_probs, out_lengths = model(waves, lengths)
        assert (out_lengths >= label_lengths).all()
        return ctc(log_probs.transpose(0, 1), labels, out_lengths, label_lengths)

    losses = []
    for _ in range(15):
        optimizer.zero_grad()
        loss = loss_now()
        assert torch.isfinite(loss)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    with torch.no_grad():
        final = float(loss_now())
    assert final < 0.7 * losses[0], losses + [final]
    # Gradients reached every trained parameter (the frontend and normalizer have none).
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize("subsampling, factor", [("conv", 2), ("conv", 4), ("stack", 1), ("stack", 2), ("stack", 3)])
@pytest.mark.parametrize("features", [FeatureConfig(), FeatureConfig(8000, 200, 80, 40)])
def test_min_samples_is_the_shortest_input_with_one_frame_from_audio_alone(subsampling, factor, features):
    """At min_samples() some subsampler output frame depends on the audio only: it is the same when
    audio is appended, and (one output frame later) when a frame's worth of audio is prepended. One
    sample less, every frame reads padding."""
    torch.manual_seed(0)
    config = ModelConfig(subsampling=subsampling, subsampling_factor=factor, conv_channels=4, hidden_size=8, num_layers=1)
    model = CTCModel(features, config, VOCAB).eval()
    shift = features.hop_length * factor  # samples per output frame
    signal = torch.randn(8 * shift + 4 * features.n_fft)
    loud = 1e5 * torch.randn(4 * shift)  # what is added around the clip: any dependence on it shows

    def frames(wave: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            x, lengths = model.subsampler(*model.features(wave[None], torch.tensor([wave.shape[0]])))
        return x[0, : int(lengths[0])]

    def audio_only_frames(n: int) -> list[int]:
        clip = signal[:n]
        alone, longer, earlier = frames(clip), frames(torch.cat([clip, loud])), frames(torch.cat([loud[:shift], clip]))
        return [j for j in range(alone.shape[0]) if j + 1 < earlier.shape[0]
                and torch.allclose(alone[j], longer[j], atol=1e-4) and torch.allclose(alone[j], earlier[j + 1], atol=1e-4)]

    n = model.min_samples()
    assert audio_only_frames(n), n
    assert not audio_only_frames(n - 1), n

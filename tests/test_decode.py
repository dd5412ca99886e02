"""asr.decode: greedy CTC collapse on hand-made log-probs, and batched transcription that gives every
waveform the same text whatever it is batched with."""

from __future__ import annotations

import pytest
import torch

torch.set_num_threads(1)

from asr.config import load_config  # noqa: E402
from asr.decode import greedy_decode  # noqa: E402
from asr.transcribe import transcribe_waves  # noqa: E402
from asr.frontend.logmel import RunningStats  # noqa: E402
from asr.model import CTCModel  # noqa: E402
from asr.text import CharTokenizer  # noqa: E402

V = 6  # blank + 5 labels
CPU = torch.device("cpu")


def log_probs(*paths: list[int], vocab: int = V, pad_label: int = 3) -> torch.Tensor:
    """Best-path label sequences -> (B, T, V) log-probs whose per-frame argmax is that label.
    Rows shorter than the longest are padded with frames whose argmax is `pad_label`."""
    frames = max(len(p) for p in paths)
    rows = [list(p) + [pad_label] * (frames - len(p)) for p in paths]
    labels = torch.tensor(rows, dtype=torch.long)
    logits = torch.randn(len(rows), frames, vocab, generator=torch.Generator().manual_seed(0)) * 0.1
    logits.scatter_(2, labels.unsqueeze(-1), 5.0)
    return logits.log_softmax(dim=-1)


def decode_one(path: list[int], length: int | None = None, blank: int = 0) -> list[int]:
    lp = log_probs(path)
    return greedy_decode(lp, torch.tensor([len(path) if length is None else length]), blank)[0]


# --------------------------------------------------------------------------- greedy_decode


def test_repeats_merge():
    assert decode_one([1, 1]) == [1]
    assert decode_one([1, 1, 2, 2, 2, 3]) == [1, 2, 3]


def test_blank_between_repeats_keeps_both():
    assert decode_one([1, 0, 1]) == [1, 1]
    assert decode_one([1, 1, 0, 0, 1, 1, 0, 2, 0, 2]) == [1, 1, 2, 2]


def test_blanks_are_dropped():
    assert decode_one([0, 0, 0, 0]) == []
    assert decode_one([0, 4, 0, 0, 5, 5, 0]) == [4, 5]


def test_single_frame():
    assert decode_one([2]) == [2]
    assert decode_one([0]) == []


def test_frames_past_length_are_ignored():
    # Frames 3.. would add labels (2, then 5) if they were read.
    assert decode_one([1, 0, 1, 2, 5], length=3) == [1, 1]
    # A repeat across the boundary: frame 1 merges with frame 0; the rest is cut off.
    assert decode_one([4, 4, 0, 4], length=2) == [4]
    assert decode_one([1, 2, 3], length=0) == []


def test_batch_with_lengths_and_padding():
    paths = [
        [1, 1, 0, 2],
        [0, 0],
        [3, 0, 3, 3, 0, 4, 4],
        [5],
        [2, 2, 2, 2, 0, 1],
    ]
    lp = log_probs(*paths, pad_label=4)  # padding frames would decode as label 4
    lengths = torch.tensor([len(p) for p in paths])
    out = greedy_decode(lp, lengths)
    assert out == [[1, 2], [], [3, 3, 4], [5], [2, 1]]
    assert all(isinstance(i, int) for ids in out for i in ids)


def test_batch_lengths_shorter_than_content():
    lp = log_probs([1, 2, 3, 4], [4, 3, 2, 1])
    assert greedy_decode(lp, torch.tensor([2, 4])) == [[1, 2], [4, 3, 2, 1]]
    assert greedy_decode(lp, torch.tensor([4, 1])) == [[1, 2, 3, 4], [4]]


def test_other_blank_id():
    # With blank=5, label 0 is an ordinary label.
    assert decode_one([0, 0, 5, 0, 1, 5, 5], blank=5) == [0, 0, 1]


def test_matches_reference_implementation_on_random_logprobs():
    g = torch.Generator().manual_seed(3)
    lp = torch.randn(4, 30, V, generator=g).log_softmax(-1)
    lengths = torch.tensor([30, 17, 1, 25])
    got = greedy_decode(lp, lengths)
    for i in range(4):
        best = lp[i, : lengths[i]].argmax(-1).tolist()
        expected, previous = [], None
        for label in best:
            if label != previous and label != 0:
                expected.append(label)
            previous = label
        assert got[i] == expected


# --------------------------------------------------------------------------- transcribe_waves

FACTOR = 4
# Sample counts chosen so that every utterance has at least FACTOR feature frames (n // 160 + 1).
LENGTHS = [16000, 4000, 9000, 800, 12345, 2000, 5551, 3200]


def signal(n: int, i: int, g: torch.Generator) -> torch.Tensor:
    t = torch.arange(n) / 16000
    f = 200 + 300 * i
    return 0.3 * torch.sin(2 * torch.pi * (f * t + 1500 * t * t)) + 0.05 * torch.randn(n, generator=g)


def make_waves() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return [signal(n, i, g) for i, n in enumerate(LENGTHS)]


@pytest.fixture(scope="module")
def waves() -> list[torch.Tensor]:
    return make_waves()


@pytest.fixture(scope="module")
def model_and_tokenizer(waves):
    return make_model_and_tokenizer(waves)


def make_model_and_tokenizer(waves: list[torch.Tensor]):
    """A random small model whose outputs vary from frame to frame (features normalized with
    their own statistics, output layer scaled up), so that transcripts are not all one letter.
    The tests below compare its transcripts exactly between two computations on one machine: the
    best label leads the next by at least 1e-3 log-prob on every frame of these waves (tests/README.md),
    far above the rounding that differs between them (about 1e-6)."""
    config = load_config(None, [
        "model.subsampling=stack", f"model.subsampling_factor={FACTOR}", "model.hidden_size=32",
        "model.num_layers=2",
    ])
    tokenizer = CharTokenizer()
    torch.manual_seed(0)
    model = CTCModel(config.features, config.model, len(tokenizer)).eval()
    with torch.no_grad():
        stats = RunningStats(config.features.n_mels)
        padded = torch.nn.utils.rnn.pad_sequence(waves, batch_first=True)
        stats.add(*model.frontend(padded, torch.tensor([w.shape[0] for w in waves])))
        model.normalizer.set_stats(*stats.mean_std())
        model.output.weight.mul_(8)
    return model, tokenizer


@pytest.fixture(scope="module")
def alone(model_and_tokenizer, waves) -> list[str]:
    model, tokenizer = model_and_tokenizer
    return [transcribe_waves(model, tokenizer, [w], CPU)[0] for w in waves]


def test_alone_transcripts_are_informative(alone):
    # Guard for the tests below: identical or empty outputs would make them vacuous.
    assert all(isinstance(t, str) for t in alone)
    assert len(set(alone)) >= 4
    assert sum(bool(t) for t in alone) >= len(alone) - 1


@pytest.mark.parametrize("batch_seconds", [0.01, 0.6, 2.0, 300.0])
def test_batched_equals_alone_in_input_order(model_and_tokenizer, waves, alone, batch_seconds):
    model, tokenizer = model_and_tokenizer
    texts = transcribe_waves(model, tokenizer, waves, CPU, batch_seconds=batch_seconds)
    assert len(texts) == len(waves)
    assert texts == alone


def test_order_follows_input(model_and_tokenizer, waves, alone):
    model, tokenizer = model_and_tokenizer
    order = [3, 0, 7, 5, 1, 6, 2, 4]
    texts = transcribe_waves(model, tokenizer, [waves[i] for i in order], CPU, batch_seconds=300.0)
    assert texts == [alone[i] for i in order]


def test_duplicates_in_a_batch(model_and_tokenizer, waves, alone):
    model, tokenizer = model_and_tokenizer
    texts = transcribe_waves(model, tokenizer, [waves[1], waves[0], waves[1]], CPU, batch_seconds=300.0)
    assert texts == [alone[1], alone[0], alone[1]]


def test_no_waves(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    assert transcribe_waves(model, tokenizer, [], CPU) == []


def test_very_short_waves_batched_equals_alone(model_and_tokenizer, waves):
    """Waves with fewer feature frames than the stacking factor (under 30 ms here)."""
    model, tokenizer = model_and_tokenizer
    g = torch.Generator().manual_seed(5)
    short = [signal(n, i, g) for i, n in enumerate([100, 479, 300])]
    batch = [waves[0], short[0], waves[3], short[1], short[2]]
    alone = [transcribe_waves(model, tokenizer, [w], CPU)[0] for w in batch]
    # An utterance shorter than the stacking factor is zero-padded to one group whether it is alone
    # or inside a longer batch, so its transcript does not depend on its batch mates.
    assert transcribe_waves(model, tokenizer, batch, CPU, batch_seconds=300.0) == alone

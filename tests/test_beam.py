"""Beam-search decoders: our CTC prefix beam search, flashlight's LM search, the CUDA search's error
on a CPU machine, and decode settings (config < decode.yaml < command line)."""

from __future__ import annotations

import itertools
import math
import sys

import numpy as np
import pytest
import torch

from asr.checkpoint import save_checkpoint
from asr.cli import main as asr_main
from asr.config import DecodeConfig, load_config
from asr.decode import (
    GreedyDecoder,
    PrefixBeamDecoder,
    ctc_prefix_beam_search,
    decode_settings,
    decoder_from_settings,
    greedy_decode,
    make_decoder,
)
from asr.lm import build_ngram_model, write_arpa, write_lexicon
from asr.model import CTCModel
from asr.text import CharTokenizer
from conftest import TINY_LM_WORDS

torch.set_num_threads(1)
TOKENIZER = CharTokenizer()


def brute_force_prefixes(log_probs: np.ndarray) -> dict[tuple[int, ...], float]:
    """log P(labelling) for every labelling, by summing over all V**T paths."""
    T, V = log_probs.shape
    out: dict[tuple[int, ...], float] = {}
    for path in itertools.product(range(V), repeat=T):
        score = float(sum(log_probs[t, c] for t, c in enumerate(path)))
        labels = tuple(c for i, c in enumerate(path) if c != 0 and (i == 0 or path[i - 1] != c))
        out[labels] = float(np.logaddexp(out.get(labels, -np.inf), score))
    return out


@pytest.mark.parametrize("seed", range(6))
def test_beam_1_equals_greedy(seed):
    torch.manual_seed(seed)
    log_probs = (torch.randn(3, 60, len(TOKENIZER)) * 3).log_softmax(-1)
    lengths = torch.tensor([60, 41, 7])
    greedy = greedy_decode(log_probs, lengths)
    for i in range(3):
        ids, score = ctc_prefix_beam_search(log_probs[i, : lengths[i]], beam_size=1)[0]
        assert ids == greedy[i]
        assert score == pytest.approx(float(log_probs[i, : lengths[i]].max(-1).values.sum()), abs=1e-3)
    beam = PrefixBeamDecoder(TOKENIZER, beam_size=1)(log_probs, lengths)
    assert [h[0].text for h in beam] == [h[0].text for h in GreedyDecoder(TOKENIZER)(log_probs, lengths)]


@pytest.mark.parametrize("seed", range(8))
def test_prefix_beam_search_matches_exhaustive_sum(seed):
    """With a beam wide enough the search is exact: the best labelling and the n-best scores equal
    the sums over all paths."""
    torch.manual_seed(seed)
    log_probs = (torch.randn(5, 4) * 2).log_softmax(-1)
    exact = brute_force_prefixes(log_probs.double().numpy())
    found = ctc_prefix_beam_search(log_probs, beam_size=200, nbest=5)
    assert tuple(found[0][0]) == max(exact, key=exact.get)
    for ids, score in found:
        assert score == pytest.approx(exact[tuple(ids)], abs=1e-4)
    assert [s for _, s in found] == sorted((s for _, s in found), reverse=True)


def test_beam_search_beats_greedy_on_the_classic_example():
    """Two frames, P(blank) = 0.6 and P(a) = 0.4 in each: the best path is blank blank (''), p = 0.36,
    but 'a' has three paths (a a, a -, - a): 0.16 + 0.24 + 0.24 = 0.64."""
    probs = torch.tensor([[0.6, 0.4], [0.6, 0.4]])
    assert greedy_decode(probs.log()[None], torch.tensor([2]))[0] == []
    (ids, score), (ids2, score2) = ctc_prefix_beam_search(probs.log(), beam_size=4, nbest=2)
    assert ids == [1] and math.exp(score) == pytest.approx(0.64)
    assert ids2 == [] and math.exp(score2) == pytest.approx(0.36)


def test_beam_search_finds_better_word_than_greedy():
    """A longer version with real letters: greedy reads 'a' as the last frame's blank wins, the
    prefix search sums the paths of 'ab'."""
    tok = TOKENIZER
    a, b = tok.encode("a")[0], tok.encode("b")[0]
    rows = []
    for label, p in [(a, 0.9), (b, 0.4), (b, 0.4), (b, 0.4)]:
        row = torch.full((len(tok),), 1e-4)
        row[label] = p
        row[0] = 1.0 - p - 1e-4 * (len(tok) - 2)
        rows.append(row)
    log_probs = torch.stack(rows).log()
    assert tok.decode(greedy_decode(log_probs[None], torch.tensor([4]))[0]) == "a"
    hyp = PrefixBeamDecoder(tok, beam_size=8)(log_probs[None], torch.tensor([4]))[0][0]
    assert hyp.text == "ab"


def test_gpu_beam_needs_cuda():
    with pytest.raises(RuntimeError, match="gpu-beam needs a CUDA device"):
        make_decoder("gpu-beam", TOKENIZER, "cpu")


def test_gpu_beam_refused_on_a_gpu_where_torchaudio_aborts(monkeypatch):
    """torchaudio's CUDA beam search aborts the whole process on compute capability 9.0+ (run on an
    H200, 2026-12-04): the decoder refuses before any decoding, saying what to use instead."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    with pytest.raises(RuntimeError, match=r"crashes the process on this GPU \(compute capability 9\.0.*use --decoder greedy"):
        make_decoder("gpu-beam", TOKENIZER, "cuda")


def test_beam_lm_without_flashlight_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "flashlight.lib.text", None)  # import raises ImportError
    with pytest.raises(RuntimeError, match=r"pip install 'asr\[lm\]'"):
        make_decoder("beam-lm", TOKENIZER, "cpu")


def test_unknown_decoder():
    with pytest.raises(ValueError, match="unknown decoder"):
        make_decoder("viterbi", TOKENIZER)


def _posteriorgram(spelling: list[dict[str, float]], tok: CharTokenizer = TOKENIZER) -> torch.Tensor:
    """Frames given as {symbol: prob}; the rest of each frame's mass goes to blank."""
    rows = []
    for frame in spelling:
        row = torch.full((len(tok),), 1e-4)
        for symbol, p in frame.items():
            row[tok.symbols.index(symbol)] = p
        row[0] = max(1.0 - float(row.sum() - row[0]), 1e-4)
        rows.append(row / row.sum())
    return torch.stack(rows).log()


def test_lm_decoding_prefers_the_in_vocabulary_word(tiny_word_lm):
    pytest.importorskip("flashlight.lib.text")
    # "the c?t": the acoustics slightly prefer 'e' (cet), which is not a word; greedy and the
    # lexicon-free search without LM say "the cet", the lexicon search with the LM says "the cat".
    frames = [{"t": 0.9}, {"h": 0.9}, {"e": 0.9}, {" ": 0.9}, {"c": 0.9}, {"e": 0.5, "a": 0.45}, {"t": 0.9}, {}]
    log_probs = _posteriorgram(frames)[None]
    lengths = torch.tensor([log_probs.shape[1]])
    assert GreedyDecoder(TOKENIZER)(log_probs, lengths)[0][0].text == "the cet"
    lm, lexicon = tiny_word_lm
    decoder = make_decoder("beam-lm", TOKENIZER, lm=lm, lexicon=lexicon, beam_size=20, lm_weight=1.0, word_score=0.0, nbest=3)
    nbest = decoder(log_probs, lengths)[0]
    assert nbest[0].text == "the cat"
    assert all(h.text.split()[-1] in TINY_LM_WORDS for h in nbest)
    # Lexicon-free, no LM: the acoustics decide.
    free = make_decoder("beam-lm", TOKENIZER, beam_size=20)(log_probs, lengths)[0][0]
    assert free.text == "the cet"


def _noisy_utterances(count: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, T, V) log-probs of `count` utterances of 2-6 random words of TINY_LM_WORDS, each frame's spelling
    blurred with random mass on other symbols, padded, and their (B,) lengths (all different)."""
    rng = np.random.default_rng(seed)
    utterances = []
    for _ in range(count):
        text = " ".join(rng.choice(TINY_LM_WORDS, size=int(rng.integers(2, 7))))
        frames = []
        for symbol in text:
            other = TOKENIZER.symbols[int(rng.integers(1, len(TOKENIZER)))]
            frames += [{symbol: 0.6, other: 0.3}, {}] if other != symbol else [{symbol: 0.9}, {}]
        utterances.append(_posteriorgram(frames))
    lengths = torch.tensor([u.shape[0] for u in utterances])
    return torch.nn.utils.rnn.pad_sequence(utterances, batch_first=True), lengths


def test_lm_decoding_in_worker_processes_equals_one_process(tiny_word_lm):
    """beam-lm with 2 worker processes gives exactly the hypotheses (texts, scores, label ids, n-best
    order) of the search in this process, per utterance, in input order."""
    pytest.importorskip("flashlight.lib.text")
    lm, lexicon = tiny_word_lm
    log_probs, lengths = _noisy_utterances(9, seed=0)
    settings = dict(lm=lm, lexicon=lexicon, beam_size=20, lm_weight=1.0, word_score=0.5, nbest=3)
    alone = make_decoder("beam-lm", TOKENIZER, **settings)
    parallel = make_decoder("beam-lm", TOKENIZER, workers=2, **settings)
    try:
        assert parallel.workers == 2 and alone.workers == 1
        expected = alone(log_probs, lengths)
        assert len({hyps[0].text for hyps in expected}) > 3  # the utterances differ, so order matters
        for _ in range(2):  # the workers stay up between calls
            assert _as_tuples(parallel(log_probs, lengths)) == _as_tuples(expected)
        one = parallel(log_probs[:1, : int(lengths[0])], lengths[:1])  # a single utterance: searched here
        assert _as_tuples(one) == _as_tuples(expected[:1])
    finally:
        parallel.close()
    assert parallel.workers == 1 and _as_tuples(parallel(log_probs, lengths)) == _as_tuples(expected)


def _as_tuples(nbests: list[list]) -> list[list[tuple]]:
    return [[(h.text, h.score, h.tokens) for h in hyps] for hyps in nbests]


def test_decoder_workers_follow_torch_threads_unless_set(tiny_word_lm):
    """`--threads N` sets torch's threads before the decoder is built: beam-lm then searches in N
    processes; an explicit `workers` setting wins."""
    pytest.importorskip("flashlight.lib.text")
    lm, lexicon = tiny_word_lm
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        from_threads = decoder_from_settings(DecodeConfig(decoder="beam-lm", lm=lm, lexicon=lexicon), TOKENIZER)
        one = decoder_from_settings(DecodeConfig(decoder="beam-lm", lm=lm, lexicon=lexicon, workers=1), TOKENIZER)
    finally:
        torch.set_num_threads(threads)
    assert from_threads.workers == 2 and one.workers == 1
    from_threads.close()


def test_decode_settings_precedence(tmp_path):
    base = DecodeConfig(decoder="greedy", beam_size=5, lm_weight=1.0)
    model_path = tmp_path / "best.pt"
    assert decode_settings(base, model_path).beam_size == 5
    (tmp_path / "decode.yaml").write_text("decode:\n  decoder: beam\n  lm_weight: 0.7\n  word_score: -1\n")
    s = decode_settings(base, model_path)
    assert (s.decoder, s.beam_size, s.lm_weight, s.word_score) == ("beam", 5, 0.7, -1.0)
    s = decode_settings(base, model_path, lm_weight=2.5, beam_size=None)
    assert s.lm_weight == 2.5 and s.beam_size == 5
    assert base.decoder == "greedy"  # not modified
    with pytest.raises(ValueError, match="unknown decoder"):
        decode_settings(base, None, decoder="nope")
    # A given decode file replaces decode.yaml; command-line options still win over it.
    tuned = tmp_path / "tuned" / "lm4.yaml"
    tuned.parent.mkdir()
    tuned.write_text("decoder: beam-lm\nlm_weight: 1.5\n")
    s = decode_settings(base, model_path, tuned, word_score=0.5)
    assert (s.decoder, s.lm_weight, s.word_score) == ("beam-lm", 1.5, 0.5)
    with pytest.raises(ValueError, match="missing.yaml: decode config not found"):
        decode_settings(base, model_path, tmp_path / "missing.yaml")


def test_decode_file_paths_are_relative_to_the_file(tmp_path, monkeypatch):
    """models/decode.yaml names its LM and lexicon beside it, so the shipped model works from any directory."""
    monkeypatch.setattr("asr.decode.flashlight_available", lambda: True)
    (tmp_path / "decode.yaml").write_text("decoder: beam-lm\nlm: lm.arpa.gz\nlexicon: words.txt\n")
    monkeypatch.chdir(tmp_path.parent)
    s = decode_settings(DecodeConfig(), tmp_path / "model.pt")
    assert (s.lm, s.lexicon) == (str(tmp_path / "lm.arpa.gz"), str(tmp_path / "words.txt"))
    assert decode_settings(DecodeConfig(), tmp_path / "model.pt", lm="/abs/other.arpa").lm == "/abs/other.arpa"


def test_beam_lm_from_a_file_falls_back_to_greedy_without_flashlight(tmp_path, monkeypatch, capsys):
    """Without the lm extra, a model whose decode.yaml asks for beam-lm still transcribes (greedy),
    saying so in one line; beam-lm asked for on the command line is not replaced (its error says how to install)."""
    monkeypatch.setattr("asr.decode.flashlight_available", lambda: False)
    (tmp_path / "decode.yaml").write_text("decoder: beam-lm\nlm: lm.arpa.gz\n")
    assert decode_settings(DecodeConfig(), tmp_path / "model.pt").decoder == "greedy"
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "flashlight-text is not installed" in err and "asr[lm]" in err
    assert decode_settings(DecodeConfig(), tmp_path / "model.pt", decoder="beam-lm").decoder == "beam-lm"
    assert capsys.readouterr().err == ""


@pytest.fixture(scope="module")
def random_checkpoint(tmp_path_factory):
    config = load_config(None, ["model.subsampling=stack", "model.subsampling_factor=4", "model.hidden_size=32",
                                "model.num_layers=1"])
    torch.manual_seed(0)
    model = CTCModel(config.features, config.model, len(TOKENIZER)).eval()
    with torch.no_grad():
        model.output.weight.mul_(8)
    path = tmp_path_factory.mktemp("ckpt") / "model.pt"
    save_checkpoint(path, {"config": config.to_dict(), "tokenizer": TOKENIZER.to_dict(), "model": model.state_dict()})
    return path


def test_cli_decode_beam_equals_greedy_at_beam_1_and_gpu_beam_error(random_checkpoint, tmp_path, capsys):
    import json

    import soundfile

    rng = np.random.default_rng(0)
    lines = []
    for i in range(3):
        path = tmp_path / f"u{i}.wav"
        soundfile.write(path, (0.1 * rng.standard_normal(16000 + 4000 * i)).astype(np.float32), 16000)
        lines.append(json.dumps({"id": f"u{i}", "audio": str(path), "duration": 1.0 + 0.25 * i, "text": "a"}))
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("\n".join(lines) + "\n")
    base = ["decode", str(random_checkpoint), str(manifest), "--device", "cpu"]
    assert asr_main(base + ["--out", str(tmp_path / "greedy.txt")]) == 0
    assert asr_main(base + ["--out", str(tmp_path / "beam1.txt"), "--decoder", "beam", "--beam-size", "1"]) == 0
    assert asr_main(base + ["--out", str(tmp_path / "beam8.txt"), "--decoder", "beam", "--beam-size", "8"]) == 0
    assert (tmp_path / "greedy.txt").read_text() == (tmp_path / "beam1.txt").read_text()
    assert len((tmp_path / "beam8.txt").read_text().splitlines()) == 3
    capsys.readouterr()
    assert asr_main(base + ["--out", str(tmp_path / "gpu.txt"), "--decoder", "gpu-beam"]) == 2
    assert "gpu-beam needs a CUDA device" in capsys.readouterr().err


@pytest.mark.parametrize("with_lm", [True, False])
def test_fast_lexicon_decoder_searches_like_torchaudios(tmp_path, with_lm):
    """lexicon_ctc_decoder (the lexicon read in Python, issue 27) gives torchaudio's ctc_decoder's
    n-best lists exactly: words, label ids (torchaudio's time steps follow from them) and scores,
    on random utterances over a lexicon of 200 words, one of them spelt two ways."""
    pytest.importorskip("flashlight.lib.text")
    from torchaudio.models.decoder import ctc_decoder

    from asr.decode import lexicon_ctc_decoder, load_flashlight_lm

    rng = np.random.default_rng(0)
    letters = list("abcdefghijklmnopqrstuvwxyz'")
    words = sorted({"".join(rng.choice(letters[:-1], size=rng.integers(1, 7))) for _ in range(200)})
    sentences = [" ".join(rng.choice(words, size=rng.integers(2, 9))) for _ in range(300)]
    write_arpa(build_ngram_model(sentences, order=3), tmp_path / "lm.arpa")
    write_lexicon(words, tmp_path / "lexicon.txt")
    with open(tmp_path / "lexicon.txt", "a", encoding="utf-8") as f:
        f.write(f"{words[0]}\t{' '.join(words[0])} ' |\n")  # a second spelling of the first word
    tokens = list(TOKENIZER.lexicon_tokens)
    options = dict(nbest=5, beam_size=30, beam_threshold=25.0, lm_weight=1.5, word_score=0.5,
                   blank_token=tokens[TOKENIZER.blank], sil_token="|", unk_word="<unk>")
    lm = str(tmp_path / "lm.arpa") if with_lm else None
    ours = lexicon_ctc_decoder(str(tmp_path / "lexicon.txt"), tokens, lm, **options)
    theirs = ctc_decoder(lexicon=str(tmp_path / "lexicon.txt"), tokens=tokens, lm=lm, **options)
    # An LM loaded once for several decoders (scripts/tune_decoder.py) numbers the words as the decoder does.
    preloaded = lexicon_ctc_decoder(str(tmp_path / "lexicon.txt"), tokens,
                                    load_flashlight_lm(lm, str(tmp_path / "lexicon.txt")) if lm else None, **options)
    logits = torch.from_numpy(rng.standard_normal((6, 60, len(tokens))).astype(np.float32) * 3)
    logits[..., TOKENIZER.blank] += 1.5
    log_probs = torch.log_softmax(logits, -1).numpy()
    for utterance, frames in enumerate((60, 55, 40, 60, 30, 12)):
        emissions = np.ascontiguousarray(log_probs[utterance, :frames])
        a, b, c = (_raw_nbest(d, emissions, 5) for d in (ours, theirs, preloaded))
        assert len(a) == len(b) == len(c) > 1
        assert a == b and c == b


def _raw_nbest(decoder, emissions: np.ndarray, nbest: int) -> list[tuple]:
    """flashlight's n-best of one utterance, through the `.decoder` both torchaudio's CTCDecoder and
    our LexiconSearch hold, with their word dictionaries: (words, label ids, score) per hypothesis."""
    results = decoder.decoder.decode(emissions.ctypes.data, emissions.shape[0], emissions.shape[1])[:nbest]
    return [([decoder.word_dict.get_entry(w) for w in r.words if w >= 0], list(r.tokens), r.score) for r in results]


def _model_with_decode_yaml(random_checkpoint, folder, decode_yaml: str):
    import shutil

    folder.mkdir(exist_ok=True)
    shutil.copy(random_checkpoint, folder / "model.pt")
    (folder / "decode.yaml").write_text(decode_yaml)
    return folder / "model.pt"


def test_search_started_early_is_taken_over_by_the_decoder(random_checkpoint, tiny_word_lm, tmp_path):
    """start_search_early (asr transcribe, before torch is imported) builds the beam-lm search its
    checkpoint's decode.yaml asks for; the Recognizer made with the same settings takes that
    process over and finds what a decoder built afterwards finds; settings that differ start their
    own, and close_early_searches stops the one nobody took. Another decoder, or a file that is no
    checkpoint, starts nothing."""
    pytest.importorskip("flashlight.lib.text")
    from asr import decode
    from asr.api import Recognizer

    lm, lexicon = tiny_word_lm
    path = _model_with_decode_yaml(random_checkpoint, tmp_path / "m",
                                   f"decoder: beam-lm\nlm: {lm}\nlexicon: {lexicon}\nbeam_size: 20\nlm_weight: 1.0\n")
    assert decode.start_search_early(path, nbest=2)
    (started,) = decode._STARTED_EARLY.values()
    recognizer = Recognizer(path, nbest=2)
    try:
        assert recognizer.decoder._process is started and not decode._STARTED_EARLY
        log_probs, lengths = _noisy_utterances(4, seed=1)
        fresh = make_decoder("beam-lm", TOKENIZER, lm=lm, lexicon=lexicon, beam_size=20, lm_weight=1.0, nbest=2)
        assert _as_tuples(recognizer.decoder(log_probs, lengths)) == _as_tuples(fresh(log_probs, lengths))
        fresh.close()
    finally:
        recognizer.close()
    assert decode.start_search_early(path, nbest=2, lm_weight=2.0)
    (other,) = decode._STARTED_EARLY.values()
    taken = Recognizer(path, nbest=2)
    assert taken.decoder._process is not other
    taken.close()
    decode.close_early_searches()
    assert not decode._STARTED_EARLY and other._process is None
    greedy = _model_with_decode_yaml(random_checkpoint, tmp_path / "g", "decoder: greedy\n")
    assert not decode.start_search_early(greedy)
    assert not decode.start_search_early(lexicon)  # not a checkpoint: the model's loading will say so
    assert not decode._STARTED_EARLY


def test_search_starts_early_without_torch(random_checkpoint, tiny_word_lm, tmp_path):
    """The point of starting early: it reads the checkpoint and settings and forks the search
    without importing torch (a fresh interpreter), and the search it builds searches."""
    pytest.importorskip("flashlight.lib.text")
    import subprocess

    lm, lexicon = tiny_word_lm
    path = _model_with_decode_yaml(random_checkpoint, tmp_path / "m", f"decoder: beam-lm\nlm: {lm}\nlexicon: {lexicon}\n")
    code = ("import sys, numpy as np; from asr import decode; started = decode.start_search_early(sys.argv[1]); "
            "print(started, 'torch' in sys.modules); (search,) = decode._STARTED_EARLY.values(); "
            "print(len(search.search([np.log(np.full((6, 30), 1 / 30, dtype=np.float32))])[0]))")
    out = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["True False", "1"]


def test_an_error_building_the_search_is_raised_by_ready_and_load(random_checkpoint, tmp_path):
    """The search is built in its own process: a bad lexicon line is raised by ready() (asr.load
    calls it, so the API reports it on loading) and by the first search, with its message."""
    pytest.importorskip("flashlight.lib.text")
    import asr
    from asr.api import Recognizer

    bad = tmp_path / "lexicon.txt"
    bad.write_text("cat\tc a t |\ndog\n")
    path = _model_with_decode_yaml(random_checkpoint, tmp_path / "m", f"decoder: beam-lm\nlexicon: {bad}\n")
    with pytest.raises(ValueError, match=r"lexicon.txt, line 2: no spelling after the word 'dog'"):
        asr.load(path)
    recognizer = Recognizer(path)
    try:
        log_probs, lengths = _noisy_utterances(1, seed=0)
        for _ in range(2):  # and by every one after it
            with pytest.raises(ValueError, match="line 2: no spelling"):
                recognizer.decoder(log_probs, lengths)
    finally:
        recognizer.close()

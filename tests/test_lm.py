"""The Kneser-Ney ARPA builder: hand-computed probabilities on a toy corpus, normalization with and
without pruning, the ARPA file as KenLM reads it, and the `asr lm` commands."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest

from asr.cli import main as asr_main
from asr.lm import _discounts, build_ngram_model, read_vocab, write_arpa, write_lexicon

TOY = ["a b", "a b", "b a"]


def read_arpa(path) -> dict[tuple[str, ...], tuple[float, float | None]]:
    entries: dict[tuple[str, ...], tuple[float, float | None]] = {}
    order = 0
    counts = {}
    for line in open(path, encoding="utf-8"):
        line = line.strip()
        if m := re.fullmatch(r"ngram (\d+)=(\d+)", line):
            counts[int(m[1])] = int(m[2])
        elif m := re.fullmatch(r"\\(\d+)-grams:", line):
            order = int(m[1])
        elif line and order and not line.startswith("\\"):
            parts = line.split("\t")
            words = tuple(parts[1].split())
            assert len(words) == order
            entries[words] = (float(parts[0]), float(parts[2]) if len(parts) > 2 else None)
    for n, c in counts.items():
        assert sum(1 for k in entries if len(k) == n) == c
    return entries


def test_bigram_matches_hand_computed_probabilities(tmp_path):
    """Sentences '<s> a b </s>' twice and '<s> b a </s>'. Counts of counts are too sparse for the
    estimated discounts, so D1, D2, D3+ = 0.5, 1, 1.5 (KenLM's fallback).

    Unigrams use continuation counts: a follows <s> and b (2), b follows a and <s> (2), </s> follows
    b and a (2), <unk> 0; total 6, each discounted by D2 = 1, so gamma = 3/6 and with |V| = 4
    (<unk> </s> a b): p(a) = p(b) = p(</s>) = 1/6 + 0.5/4 = 7/24, p(<unk>) = 1/8.
    Bigrams use raw counts. Context <s>: a 2, b 1 (sum 3); mass D2 + D1 = 1.5, gamma = 0.5:
    p(a|<s>) = (2-1)/3 + 0.5 * 7/24 = 23/48, p(b|<s>) = 0.5/3 + 0.5 * 7/24 = 15/48, backoff 0.5.
    The same numbers hold for contexts a (b 2, </s> 1) and b (</s> 2, a 1).
    Unseen: p(a|a) = backoff(a) * p(a) = 7/48.
    """
    model = build_ngram_model(TOY, order=2)
    assert model.prob(["a"]) == pytest.approx(7 / 24)
    assert model.prob(["</s>"]) == pytest.approx(7 / 24)
    assert model.prob(["<unk>"]) == pytest.approx(1 / 8)
    assert model.prob(["<s>", "a"]) == pytest.approx(23 / 48)
    assert model.prob(["<s>", "b"]) == pytest.approx(15 / 48)
    assert model.prob(["a", "b"]) == pytest.approx(23 / 48)
    assert model.prob(["a", "</s>"]) == pytest.approx(15 / 48)
    assert model.prob(["b", "</s>"]) == pytest.approx(23 / 48)
    assert model.prob(["b", "a"]) == pytest.approx(15 / 48)
    assert model.prob(["a", "a"]) == pytest.approx(7 / 48)
    assert model.prob(["a", "<unk>"]) == pytest.approx(1 / 16)

    write_arpa(model, tmp_path / "toy.arpa")
    arpa = read_arpa(tmp_path / "toy.arpa")
    log10 = math.log10
    assert arpa[("a",)][0] == pytest.approx(log10(7 / 24), abs=1e-6)
    assert arpa[("a",)][1] == pytest.approx(log10(0.5), abs=1e-6)
    assert arpa[("<s>",)][0] == -99.0 and arpa[("<s>",)][1] == pytest.approx(log10(0.5), abs=1e-6)
    assert arpa[("<s>", "a")] == (pytest.approx(log10(23 / 48), abs=1e-6), None)
    assert arpa[("b", "a")][0] == pytest.approx(log10(15 / 48), abs=1e-6)
    assert len([k for k in arpa if len(k) == 2]) == 6


def test_discounts_follow_the_modified_kneser_ney_formula():
    counts = np.array([1] * 10 + [2] * 4 + [3] * 3 + [4] * 2 + [9])
    y = 10 / (10 + 2 * 4)
    assert _discounts(counts, (0.5, 1.0, 1.5)) == pytest.approx((1 - 2 * y * 4 / 10, 2 - 3 * y * 3 / 4, 3 - 4 * y * 2 / 3))
    assert _discounts(np.array([1, 1, 2]), (0.5, 1.0, 1.5)) == (0.5, 1.0, 1.5)


CORPUS = ["the cat sat on the mat", "the dog sat on the log", "a cat ate the rat", "the cat ran",
          "a dog ran on the mat", "the rat sat", "on the mat the cat sat", "the dog ate a rat"] * 3 + ["a mat", "the end"]


@pytest.mark.parametrize("order,prune,entropy", [(3, (), 0), (3, (0, 1), 0), (4, (0, 0, 2), 0), (2, (0, 1), 0),
                                                 (3, (), 1e-3), (4, (0, 0, 1), 1e-2), (2, (), 1e-2)])
def test_every_context_sums_to_one(order, prune, entropy):
    model = build_ngram_model(CORPUS, order=order, prune=prune, prune_entropy=entropy)
    predicted = [w for w in model.words if w != "<s>"]
    contexts = set()
    for n in range(1, order):
        for row in model.tokens(n):
            contexts.add(tuple(model.words[i] for i in row))
    contexts.add(())
    for context in contexts:
        if "</s>" in context:
            continue
        total = sum(model.prob(list(context) + [w]) for w in predicted)
        assert total == pytest.approx(1.0, abs=1e-9), context


def test_pruning_drops_rare_ngrams_and_keeps_prefixes():
    full = build_ngram_model(CORPUS, order=3)
    pruned = build_ngram_model(CORPUS, order=3, prune=(0, 0, 3))
    assert len(pruned.orders[2].word) < len(full.orders[2].word)
    assert len(pruned.orders[0].word) == len(full.orders[0].word)
    kept = {tuple(r) for r in pruned.tokens(3).tolist()}
    bigrams = {tuple(r) for r in pruned.tokens(2).tolist()}
    assert all(k[:2] in bigrams and k[1:] in bigrams for k in kept)
    # A kept n-gram keeps its probability.
    for row in pruned.tokens(3)[:5]:
        words = [pruned.words[i] for i in row]
        assert pruned.prob(words) == pytest.approx(full.prob(words))


def _drop_one(model, n: int, index: int):
    """A copy of `model` without the index-th n-gram of order n, its backoffs recomputed."""
    import copy

    from asr.lm import _keep_only, _set_backoffs

    smaller = copy.deepcopy(model)
    keep = [np.ones(len(t.word), dtype=bool) for t in smaller.orders]
    keep[n - 1][index] = False
    _keep_only(smaller, keep)
    _set_backoffs(smaller)
    return smaller


@pytest.mark.parametrize("order", [2, 3])
def test_entropy_pruning_cost_is_the_exact_divergence_of_removing_one_ngram(order):
    # Stolcke's D for an n-gram of the highest order equals P(h) KL(p(.|h) || p'(.|h)) computed by
    # brute force over the vocabulary with that n-gram removed and the backoff recomputed.
    from asr.lm import _history_probs, _removal_costs

    model = build_ngram_model(CORPUS, order=order)
    cost, _ = _removal_costs(model, order, _history_probs(model))
    predicted = [w for w in model.words if w != "<s>"]
    tokens = model.tokens(order)
    checked = 0
    for index in range(0, len(tokens), 3):
        smaller = _drop_one(model, order, index)
        history = [model.words[i] for i in tokens[index, :-1]]
        p_history = math.prod(model.prob(history[:k + 1]) if history[k] != "<s>" else 1.0 for k in range(len(history)))
        divergence = sum(model.prob(history + [w]) * math.log(model.prob(history + [w]) / smaller.prob(history + [w]))
                         for w in predicted)
        assert cost[index] == pytest.approx(p_history * divergence, rel=1e-6, abs=1e-12), history
        checked += 1
    assert checked >= 5


def test_entropy_pruning_drops_the_cheapest_ngrams_keeps_prefixes_and_grows_with_the_threshold():
    from asr.lm import _history_probs, _removal_costs

    full = build_ngram_model(CORPUS, order=3)
    cost, _ = _removal_costs(full, 3, _history_probs(full))
    threshold = float(np.median(np.expm1(cost)))
    pruned = build_ngram_model(CORPUS, order=3, prune_entropy=threshold)
    kept = {tuple(r) for r in pruned.tokens(3).tolist()}
    expected = {tuple(r) for r, c in zip(full.tokens(3).tolist(), cost) if math.expm1(c) >= threshold}
    assert kept == expected and 0 < len(kept) < len(full.orders[2].word)
    bigrams = {tuple(r) for r in pruned.tokens(2).tolist()}
    assert all(k[:2] in bigrams and k[1:] in bigrams for k in kept)
    for row in pruned.tokens(3):
        words = [pruned.words[i] for i in row]
        assert pruned.prob(words) == pytest.approx(full.prob(words))
    sizes = [sum(len(t.word) for t in build_ngram_model(CORPUS, order=3, prune_entropy=x).orders)
             for x in (1e-9, threshold, 10 * threshold, 1e6)]
    assert sizes == sorted(sizes, reverse=True) and sizes[0] > sizes[-1]
    assert sizes[-1] == len(full.orders[0].word)  # a millionfold rise allowed: only unigrams stay


def test_vocab_maps_other_words_to_unk():
    model = build_ngram_model(["a b c", "c b a zebra"], order=2, vocab=["a", "b", "c", "dog"])
    assert "zebra" not in model.words and "dog" in model.words
    assert model.prob(["a", "zebra"]) == model.prob(["a", "<unk>"]) > 0
    assert model.prob(["dog"]) > 0  # an unseen vocabulary word keeps the uniform share


def test_kenlm_reads_the_arpa_and_agrees(tmp_path):
    kenlm = pytest.importorskip("kenlm")
    model = build_ngram_model(CORPUS, order=3, prune=(0, 0, 1))
    write_arpa(model, tmp_path / "lm.arpa")
    lm = kenlm.Model(str(tmp_path / "lm.arpa"))
    for sentence in ["the cat sat on the log", "a rat ran", "dog dog dog", "the end"]:
        words = ["<s>"] + sentence.split() + ["</s>"]
        ours = sum(math.log10(model.prob(words[max(0, i - 2): i + 1])) for i in range(1, len(words)))
        assert lm.score(sentence, bos=True, eos=True) == pytest.approx(ours, abs=1e-4)


def test_cli_lm_build_and_lexicon(tmp_path, capsys):
    import gzip

    text = tmp_path / "text.txt.gz"
    with gzip.open(text, "wt") as f:
        f.write("THE CAT SAT.\nThe dog, sat!\n\nA CAT'S HAT\n")
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("THE\nCAT\nSAT\nDOG\nCAT'S\n")
    arpa = tmp_path / "lm.arpa"
    assert asr_main(["lm", "build", str(text), "--order", "3", "--out", str(arpa), "--vocab", str(vocab),
                     "--prune", "0", "0", "1"]) == 0
    entries = read_arpa(arpa)
    assert ("cat's",) in entries and ("<unk>",) in entries and ("hat",) not in entries
    assert asr_main(["lm", "build", str(text), "--order", "2", "--out", str(tmp_path / "2.arpa"), "--max-lines", "1"]) == 0
    assert set(k[0] for k in read_arpa(tmp_path / "2.arpa") if len(k) == 1) == {"<unk>", "<s>", "</s>", "the", "cat", "sat"}
    assert asr_main(["lm", "build", str(text), "--order", "3", "--out", str(tmp_path / "e.arpa"), "--vocab", str(vocab),
                     "--prune-entropy", "1e6"]) == 0
    assert all(len(k) == 1 for k in read_arpa(tmp_path / "e.arpa"))
    with pytest.raises(ValueError, match="entropy-pruning threshold must be 0 or more"):
        build_ngram_model(["a b"], order=2, prune_entropy=-1e-7)  # a millionfold rise allowed: only unigrams stay
    lexicon = tmp_path / "lexicon.txt"
    assert asr_main(["lm", "lexicon", str(arpa), "--out", str(lexicon)]) == 0
    lines = lexicon.read_text().splitlines()
    assert "cat's\tc a t ' s |" in lines and not any(line.startswith("<") for line in lines)
    assert read_vocab(vocab) == ["the", "cat", "sat", "dog", "cat's"]
    assert write_lexicon(["ab"], tmp_path / "l2.txt", word_separator="") == 1
    assert (tmp_path / "l2.txt").read_text() == "ab\ta b\n"


def test_perplexity_from_the_arpa_file_agrees_with_the_model_and_reads_gzip(tmp_path, capsys):
    """asr.lm.perplexity reads the written ARPA (plain and .gz) and backs off as the model defines
    p(w|h) (NgramModel.prob, checked above to sum to one): a hand-summed perplexity must match."""
    import gzip
    import shutil

    from asr.lm import perplexity

    model = build_ngram_model(CORPUS, order=3, prune=[0, 0, 1])
    write_arpa(model, tmp_path / "lm.arpa")
    with open(tmp_path / "lm.arpa", "rb") as src, gzip.open(tmp_path / "lm.arpa.gz", "wb") as dst:
        shutil.copyfileobj(src, dst)
    sentences = [CORPUS[0], CORPUS[-1], "zzz " + CORPUS[1]]  # the last holds an unknown word
    total, tokens = 0.0, 0
    for sentence in sentences:
        words = ["<s>"] + [w if w in model.words else "<unk>" for w in sentence.split()] + ["</s>"]
        for i in range(1, len(words)):
            total += math.log10(model.prob(words[max(0, i - 2):i + 1]))
            tokens += 1
    expected = 10 ** (-total / tokens)
    for path in ("lm.arpa", "lm.arpa.gz"):
        result = perplexity(tmp_path / path, sentences)
        assert result["perplexity"] == pytest.approx(expected, rel=1e-5)
        assert result["sentences"] == 3 and result["oov_rate"] == pytest.approx(1 / result["words"])
    (tmp_path / "dev.txt").write_text("\n".join(sentences) + "\n")
    assert asr_main(["lm", "perplexity", str(tmp_path / "lm.arpa.gz"), str(tmp_path / "dev.txt")]) == 0
    assert f"perplexity {expected:.1f}" in capsys.readouterr().out
    assert read_vocab(tmp_path / "lm.arpa.gz") == read_vocab(tmp_path / "lm.arpa")  # the lexicon reads .gz too


def test_lm_build_takes_several_texts_and_manifests_with_their_words(tmp_path):
    """An LM from a book text plus a corpus's training transcripts, its vocabulary a word list plus
    those transcripts' words (how the shipped LM is built: recipes/librispeech/RESULTS.md)."""
    import json

    book = tmp_path / "book.txt"
    book.write_text("THE CAT SAT\nTHE DOG SAT\n")
    manifest = tmp_path / "train.jsonl"
    manifest.write_text("".join(json.dumps({"id": f"u{i}", "audio": "x.wav", "duration": 1.0, "text": t}) + "\n"
                                for i, t in enumerate(["the zebu sat", "A Zebu's hat!"])))
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("THE\nCAT\nSAT\n")
    assert read_vocab(manifest) == ["the", "zebu", "sat", "a", "zebu's", "hat"]
    arpa = tmp_path / "lm.arpa"
    assert asr_main(["lm", "build", str(book), str(manifest), "--order", "2", "--out", str(arpa),
                     "--vocab", str(vocab), str(manifest)]) == 0
    unigrams = {k[0] for k in read_arpa(arpa) if len(k) == 1}
    assert {"zebu", "zebu's", "cat"} <= unigrams and "dog" not in unigrams  # dog: in the text, not the vocabulary
    assert ("the", "zebu") in read_arpa(arpa)
    (tmp_path / "bad.jsonl").write_text("{not json}\n")
    assert asr_main(["lm", "build", str(tmp_path / "bad.jsonl"), "--out", str(tmp_path / "x.arpa")]) == 2


# KenLM's binary format (`asr lm binary`): the same model, loaded in a fraction of a second.

def _build_binary_or_skip():
    from asr.lm import find_build_binary

    tool = find_build_binary()
    if tool is None:
        pytest.skip("KenLM's build_binary is not compiled here (`asr lm binary` compiles it once, about a minute)")
    return tool


def test_binary_lm_scores_equal_the_arpa_exactly(tmp_path, capsys):
    """Unquantized trie: every log-probability flashlight's KenLM gives, over every word after
    every state, is the ARPA's to the last bit."""
    _build_binary_or_skip()
    kenlm = pytest.importorskip("flashlight.lib.text.decoder.kenlm")
    dictionary = pytest.importorskip("flashlight.lib.text.dictionary")
    model = build_ngram_model(CORPUS, order=3, prune=(0, 0, 1))
    write_arpa(model, tmp_path / "lm.arpa")
    assert asr_main(["lm", "binary", str(tmp_path / "lm.arpa"), "--out", str(tmp_path / "lm.bin")]) == 0
    assert "KenLM binary trie" in capsys.readouterr().out
    assert (tmp_path / "lm.bin").read_bytes().startswith(b"mmap lm http://kheafield.com/code")
    words = dictionary.Dictionary(model.words)
    words.set_default_index(words.get_index("<unk>"))
    arpa, binary = kenlm.KenLM(str(tmp_path / "lm.arpa"), words), kenlm.KenLM(str(tmp_path / "lm.bin"), words)
    ids = range(len(model.words))
    for sentence in [[], ["the"], ["the", "cat"], ["a", "rat", "ran"], ["dog", "dog", "nowhere"]]:
        states = [arpa.start(False), binary.start(False)]
        for word in sentence:
            states = [lm.score(state, words.get_index(word))[0] for lm, state in zip((arpa, binary), states)]
        scores = [[lm.score(state, i)[1] for i in ids] + [lm.finish(state)[1]] for lm, state in zip((arpa, binary), states)]
        assert scores[0] == scores[1], sentence


def test_lm_binary_errors_name_the_file_and_what_is_missing(tmp_path, monkeypatch):
    from asr.lm import compile_build_binary, write_kenlm_binary

    with pytest.raises(FileNotFoundError, match="nothing.arpa: ARPA file not found"):
        write_kenlm_binary(tmp_path / "nothing.arpa", tmp_path / "out.bin", tool="/bin/true")
    (tmp_path / "bad.arpa").write_text("not an arpa file\n")
    with pytest.raises(RuntimeError, match="bad.arpa: build_binary failed"):
        write_kenlm_binary(tmp_path / "bad.arpa", tmp_path / "out.bin", tool="/bin/false")
    assert not (tmp_path / "out.bin").exists() and list(tmp_path.glob(".out.bin.tmp*")) == []
    monkeypatch.setenv("ASR_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("CXX", "no-such-compiler")
    with pytest.raises(RuntimeError, match="needs a C\\+\\+ compiler: 'no-such-compiler' is not on PATH"):
        compile_build_binary(tmp_path)
    monkeypatch.setenv("CXX", "sh")  # any program on PATH: the source is refused before compiling
    with pytest.raises(RuntimeError, match="bad.arpa: neither a kenlm sdist"):
        compile_build_binary(tmp_path / "bad.arpa")
    with pytest.raises(RuntimeError, match="no lm/build_binary_main.cc in it"):
        compile_build_binary(tmp_path)
    monkeypatch.setenv("ASR_KENLM_BUILD_BINARY", str(tmp_path / "bad.arpa"))
    from asr.lm import find_build_binary

    with pytest.raises(FileNotFoundError, match="ASR_KENLM_BUILD_BINARY is not an executable"):
        find_build_binary()


@pytest.mark.slow
def test_shipped_binary_lm_transcribes_like_the_arpa(shared_data):
    """models/decode.yaml's binary LM and the ARPA it was made from give the same transcripts with the
    shipped settings on the example and eight libri-other dev utterances (all 206 of dev:
    scripts/compare_lms.py, benchmarks/RESULTS.md). About 30 s: the lexicon is read twice."""
    import sys
    from pathlib import Path

    import yaml

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from conftest import REPO_ROOT
    from encoder_support import encoder_available

    from asr.audio import read_mono
    from asr.checkpoint import load_model
    from asr.decode import FlashlightDecoder, flashlight_available, load_flashlight_lm
    from asr.transcribe import Pipeline

    models = REPO_ROOT / "models"
    settings = yaml.safe_load((models / "decode.yaml").read_text())
    binary, arpa = models / settings["lm"], models / "en-3gram.arpa.gz"
    if not (encoder_available() and flashlight_available() and binary.is_file() and arpa.is_file()):
        pytest.skip("needs the shipped model and LMs, the Whisper encoder and flashlight-text")
    assert binary.suffix == ".bin"
    files = [REPO_ROOT / "examples" / "4959-28865-0017.flac"]
    files += sorted((shared_data / "libri-other" / "dev").rglob("*.opus"))[:8]
    model, tokenizer, _ = load_model(models / "en-whisper-tiny-bilstm-ctc.pt", "cpu")
    pipeline = Pipeline.for_model(model, tokenizer, "cpu")
    log_probs = pipeline.log_probs([read_mono(f, pipeline.acoustic.sample_rate) for f in files])
    lengths = np.array([lp.shape[0] for lp in log_probs])
    padded = np.zeros((len(log_probs), lengths.max(), log_probs[0].shape[1]), dtype=np.float32)
    for i, lp in enumerate(log_probs):
        padded[i, : lp.shape[0]] = lp
    lexicon = str(models / settings["lexicon"])
    texts = []
    for lm in (arpa, binary):
        decoder = FlashlightDecoder(tokenizer, load_flashlight_lm(str(lm), lexicon), lexicon, settings["beam_size"],
                                    settings["lm_weight"], settings["word_score"], beam_threshold=settings["beam_threshold"])
        texts.append([h[0].text for h in decoder(padded, lengths)])
    assert texts[0] == texts[1]
    assert all(texts[0])

"""Word n-gram language models: interpolated modified Kneser-Ney estimation written as ARPA, and the
spelling lexicon that lexicon-constrained beam search needs.

No package on PyPI builds a correct Kneser-Ney ARPA from Python (KenLM's `lmplz` ships as C++ source
only; the `kenlm` wheels only query models; `arpabo` 0.3.0 names Kneser-Ney but discounts without
continuation counts above unigrams and writes backoff weights of one; NLTK writes no ARPA), so the
estimator is here, in numpy: n-grams are counted by sorting integer word ids, not with Python dicts,
which keeps an 18.7 M-word text within a few GB and minutes.

The estimate follows Chen & Goodman's interpolated modified Kneser-Ney as KenLM's `lmplz` computes it:
- the highest order and n-grams that start with <s> use raw counts; lower orders use continuation
  counts (the number of distinct words seen before them);
- three discounts per order, D1 D2 D3+, from that order's counts of counts
  (Y = n1/(n1+2 n2), Dk = k - (k+1) Y n_{k+1}/n_k); a corpus too small for them gets 0.5 1 1.5
  (lmplz's --discount_fallback);
- p(w|h) = (a(hw) - D(a(hw))) / a(h.) + gamma(h) p(w|h'), gamma(h) = (D1 N1(h.) + D2 N2(h.) + D3 N3+(h.)) / a(h.),
  and unigrams interpolate with the uniform distribution over the vocabulary (<unk> included);
- pruning (--prune T1 T2 ...) drops n-grams of order k whose (adjusted) count is <= Tk, together with
  those whose context or suffix was dropped; the backoff weights are then recomputed so that every
  context's distribution sums to one: b(h) = (1 - sum_kept p(w|h)) / (1 - sum_kept p(w|h')). Without
  pruning that formula gives exactly gamma(h);
- entropy pruning (--prune-entropy THRESHOLD, after any count pruning) drops the n-grams whose removal
  costs the least perplexity, Stolcke's criterion as SRILM's `ngram -prune` applies it (LibriSpeech's
  pruned LMs). With Kneser-Ney estimates it judges by the continuation-count lower orders, which are
  poor stand-ins for the pruned probabilities (Chelba et al. 2010): on our LibriSpeech-vocabulary text
  count cutoffs kept lower perplexity at the same size (recipes/librispeech/RESULTS.md, lever 4).
"""

from __future__ import annotations

import gzip
import io
import itertools
import json
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Callable, Iterable, Iterator, Sequence

import numpy as np

from .files import write_atomic
from .text import normalize

log = logging.getLogger(__name__)

UNK, BOS, EOS = "<unk>", "<s>", "</s>"
FALLBACK_DISCOUNTS = (0.5, 1.0, 1.5)
LOG10_ZERO = -99.0  # what ARPA files write for log10(0), e.g. the probability of <s>


@dataclass
class NgramOrder:
    """The n-grams of one order, sorted by (context index, word): `context` indexes the previous
    order's table (all zeros for unigrams), `word` is the last word's id."""

    context: np.ndarray  # int64 (N,)
    word: np.ndarray  # int64 (N,)
    count: np.ndarray  # int64 (N,) adjusted counts (raw for the highest order and <s>-initial n-grams)
    prob: np.ndarray = field(default=None)  # float64 (N,) interpolated p(w|h)
    backoff: np.ndarray = field(default=None)  # float64 (N,) backoff weight of this n-gram as a context
    discounts: tuple[float, float, float] = FALLBACK_DISCOUNTS


@dataclass
class NgramModel:
    words: list[str]  # id -> word; 0 <unk>, 1 <s>, 2 </s>
    orders: list[NgramOrder]

    @property
    def order(self) -> int:
        return len(self.orders)

    def tokens(self, n: int) -> np.ndarray:
        """(N, n) word ids of the n-grams of order n (1-based), in table order."""
        cols = [self.orders[n - 1].word]
        index = self.orders[n - 1].context
        for k in range(n - 1, 0, -1):
            cols.append(self.orders[k - 1].word[index])
            index = self.orders[k - 1].context[index]
        return np.stack(cols[::-1], axis=1)

    def lookup(self, ngrams: np.ndarray) -> np.ndarray:
        """(N, n) word ids -> index in order n's table, or -1 where absent (or a prefix is absent)."""
        n = ngrams.shape[1]
        index = np.zeros(len(ngrams), dtype=np.int64)
        found = np.ones(len(ngrams), dtype=bool)
        for k in range(1, n + 1):
            index, hit = _find(self.orders[k - 1], index, ngrams[:, k - 1])
            found &= hit
        return np.where(found, index, -1)

    def prob(self, words: Sequence[str]) -> float:
        """p(words[-1] | words[:-1]) as the ARPA file defines it (backing off where needed); for tests."""
        ids = [self._id(w) for w in words][-self.order:]
        while True:
            index = self.lookup(np.array([ids], dtype=np.int64))[0]
            if index >= 0:
                return float(self.orders[len(ids) - 1].prob[index])
            context = self.lookup(np.array([ids[:-1]], dtype=np.int64))[0] if len(ids) > 1 else -1
            weight = float(self.orders[len(ids) - 2].backoff[context]) if context >= 0 else 1.0
            return weight * self.prob([self.words[i] for i in ids[1:]])

    def _id(self, word: str) -> int:
        if not hasattr(self, "_ids"):
            self._ids = {w: i for i, w in enumerate(self.words)}
        return self._ids.get(word, 0)


def _find(table: NgramOrder, context: np.ndarray, word: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    bits = _word_bits(table)
    keys = (table.context << bits) | table.word
    query = (context.astype(np.int64) << bits) | word.astype(np.int64)
    if len(keys) == 0:  # an order that pruning emptied
        return np.zeros(len(query), dtype=np.int64), np.zeros(len(query), dtype=bool)
    pos = np.searchsorted(keys, query).clip(max=len(keys) - 1)
    return pos, keys[pos] == query


def _word_bits(table: NgramOrder) -> int:
    return 32


def iter_text(path: str | os.PathLike, max_lines: int = 0) -> Iterator[str]:
    """Lines of a text file (.gz read as gzip), normalized like transcripts (lower case a-z ' and space);
    for a manifest (.jsonl), its transcripts."""
    if str(path).endswith(".jsonl"):
        yield from _manifest_texts(path, max_lines)
        return
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8", errors="replace") as f:
        for i, line in enumerate(f):
            if max_lines and i >= max_lines:
                break
            text = normalize(line)
            if text:
                yield text


def _manifest_texts(path: str | os.PathLike, max_lines: int = 0) -> Iterator[str]:
    """The normalized `text` of each line of a JSON Lines manifest (read without asr.data, which
    needs torch: the LM tools do not)."""
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if max_lines and number > max_lines:
                break
            if not line.strip():
                continue
            try:
                text = normalize(json.loads(line)["text"])
            except (ValueError, KeyError, TypeError):
                raise ValueError(f"{path}:{number}: not a manifest line with a text field") from None
            if text:
                yield text


def _open_text(path: str | os.PathLike) -> io.TextIOBase:
    """A text file for reading, gunzipped when its name ends in .gz (ARPA files ship compressed)."""
    if str(path).endswith(".gz"):
        return gzip.open(path, "rt", encoding="utf-8")
    return open(path, encoding="utf-8")


def read_arpa(path: str | os.PathLike) -> list[dict[tuple[str, ...], tuple[float, float]]]:
    """An ARPA file (.gz too) as one dict per order: n-gram words -> (log10 p, log10 backoff)."""
    tables: list[dict[tuple[str, ...], tuple[float, float]]] = []
    with _open_text(path) as f:
        if f.readline().strip() != "\\data\\":
            raise ValueError(f"{path}: not an ARPA file (it must start with \\data\\)")
        for line in f:
            line = line.strip()
            if line.startswith("\\") and line.endswith("-grams:"):
                n = int(line[1:].split("-")[0])
                tables.append({})
            elif line and not line.startswith(("\\", "ngram ")) and tables:
                fields = line.split()
                if len(fields) not in (n + 1, n + 2):
                    raise ValueError(f"{path}: malformed {n}-gram line {line[:80]!r}")
                tables[n - 1][tuple(fields[1:n + 1])] = (float(fields[0]), float(fields[n + 1]) if len(fields) == n + 2 else 0.0)
    if not tables:
        raise ValueError(f"{path}: no n-grams in the ARPA file")
    return tables


def arpa_log10_prob(tables: list[dict[tuple[str, ...], tuple[float, float]]], history: Sequence[str], word: str) -> float:
    """log10 p(word | history) with ARPA backoff: the longest n-gram present, plus the backoff
    weights of the contexts that were shortened to reach it."""
    context = tuple(history[len(history) - len(tables) + 1:]) if len(tables) > 1 else ()
    backoff = 0.0
    while True:
        entry = tables[len(context)].get(context + (word,))
        if entry is not None:
            return backoff + entry[0]
        if not context:
            return backoff + tables[0][(UNK,)][0]
        backoff += tables[len(context) - 1].get(context, (0.0, 0.0))[1]
        context = context[1:]


def perplexity(arpa: str | os.PathLike, sentences: Iterable[str]) -> dict[str, float]:
    """Per-word perplexity of normalized sentences under an ARPA model, as KenLM's `query` reports it:
    every word and each sentence's </s> counted, words outside the vocabulary scored as <unk> (their
    share is returned as oov_rate). Returns {perplexity, words, sentences, oov_rate}."""
    tables = read_arpa(arpa)
    vocab = {key[0] for key in tables[0]}
    total, tokens, oov, count = 0.0, 0, 0, 0
    for sentence in sentences:
        words = [w if w in vocab else UNK for w in sentence.split()] + [EOS]
        oov += words.count(UNK)
        history = [BOS]
        for word in words:
            total += arpa_log10_prob(tables, history, word)
            history.append(word)
        tokens += len(words)
        count += 1
    if not tokens:
        raise ValueError("no sentences to score")
    return {"perplexity": 10 ** (-total / tokens), "words": tokens - count, "sentences": count,
            "oov_rate": oov / max(tokens - count, 1)}


def read_vocab(path: str | os.PathLike) -> list[str]:
    """Words of a vocabulary: one per line (first column), the unigrams of an ARPA file (.gz too),
    or the words of a manifest's transcripts (.jsonl); normalized like transcripts, in first-seen order, without <s> </s> <unk>."""
    words: dict[str, None] = {}
    if str(path).endswith(".jsonl"):  # a manifest: the words of its transcripts
        for text in _manifest_texts(path):
            words.update(dict.fromkeys(text.split()))
        return list(words)
    with _open_text(path) as f:
        first = f.readline()
        if first.strip() == "\\data\\":
            lines: Iterable[str] = _arpa_unigrams(f)
        else:
            lines = itertools.chain([first.split()[0]] if first.strip() else [], (line.split()[0] for line in f if line.strip()))
        for word in lines:
            if word in (UNK, BOS, EOS):
                continue
            word = normalize(word)
            if word and " " not in word:
                words.setdefault(word)
    return list(words)


def _arpa_unigrams(f: io.TextIOBase) -> Iterator[str]:
    inside = False
    for line in f:
        line = line.strip()
        if line == "\\1-grams:":
            inside = True
        elif inside and line.startswith("\\"):
            return
        elif inside and line:
            yield line.split()[1]


def build_ngram_model(
    lines: Iterable[str],
    order: int = 3,
    vocab: Sequence[str] | None = None,
    prune: Sequence[int] = (),
    discount_fallback: tuple[float, float, float] = FALLBACK_DISCOUNTS,
    prune_entropy: float = 0.0,
) -> NgramModel:
    """Estimate an interpolated modified Kneser-Ney model from normalized sentences (one per item).

    vocab: words outside it become <unk> (None: every word of the text is in the vocabulary).
    prune: per-order count thresholds, e.g. (0, 1, 1): 2- and 3-grams seen once are dropped; the
    last value repeats for higher orders; unigrams are never pruned.
    prune_entropy: then drop the n-grams whose removal raises perplexity by a relative amount below
    this (Stolcke pruning, e.g. 1e-7 as LibriSpeech's pruned LMs; 0: none).
    """
    if order < 1:
        raise ValueError(f"n-gram order must be at least 1, got {order}")
    if not prune_entropy >= 0:
        raise ValueError(f"the entropy-pruning threshold must be 0 or more, got {prune_entropy}")
    started = time.perf_counter()
    words, stream, sentences = _word_id_stream(lines, vocab)
    log.info("read %d sentences, %d tokens, %d word types in %.1f s", sentences, len(stream) - 2 * sentences,
             len(words), time.perf_counter() - started)
    grams, raw = _count_ngrams(stream, order)
    del stream
    adjusted = _adjusted_counts(grams, raw)
    model = NgramModel(words, [_unigram_order(len(words), grams[0], adjusted[0], discount_fallback)])
    for n in range(2, order + 1):
        model.orders.append(_higher_order(model, grams[n - 1], adjusted[n - 1], discount_fallback))
        log.info("order %d: %d n-grams, discounts %s", n, len(adjusted[n - 1]),
                 " ".join(f"{x:.3f}" for x in model.orders[-1].discounts))
    if prune:
        _prune(model, list(prune))
    if prune_entropy > 0:
        before = sum(len(t.word) for t in model.orders[1:])
        _prune_entropy(model, prune_entropy)
        log.info("entropy pruning (%g) kept %d of %d n-grams above unigrams", prune_entropy,
                 sum(len(t.word) for t in model.orders[1:]), before)
    _set_backoffs(model)
    log.info("estimated a %d-gram model in %.1f s", order, time.perf_counter() - started)
    return model


def _word_id_stream(lines: Iterable[str], vocab: Sequence[str] | None) -> tuple[list[str], np.ndarray, int]:
    """(words by id: <unk>, <s>, </s>, then the vocabulary's or the text's words in order of
    appearance; every sentence as ids, each between <s> (1) and </s> (2), one (N,) int32 stream; the
    number of sentences). With a vocabulary, other words are <unk> (0)."""
    words = [UNK, BOS, EOS]
    ids: dict[str, int] = {}
    if vocab is not None:
        for w in vocab:
            if w not in ids and w not in (UNK, BOS, EOS):
                ids[w] = len(words)
                words.append(w)
    fixed_vocab = vocab is not None
    chunks: list[np.ndarray] = []
    buffer: list[int] = []
    sentences = 0
    for line in lines:
        buffer.append(1)
        for w in line.split():
            i = ids.get(w)
            if i is None:
                if fixed_vocab:
                    i = 0
                else:
                    i = ids[w] = len(words)
                    words.append(w)
            buffer.append(i)
        buffer.append(2)
        sentences += 1
        if len(buffer) > 1_000_000:  # into int32 arrays as they come: one Python list of a long text's ids would be far larger
            chunks.append(np.array(buffer, dtype=np.int32))
            buffer = []
    chunks.append(np.array(buffer, dtype=np.int32))
    if sentences == 0:
        raise ValueError("no text to estimate a language model from")
    if len(words) >= 2**31:
        raise ValueError("vocabulary too large")
    return words, np.concatenate(chunks), sentences


def _count_ngrams(stream: np.ndarray, order: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """The distinct n-grams of orders 1..order within sentences of the id stream, each order's as
    (N, n) id rows sorted lexicographically, and their raw counts (N,)."""
    # Sentence index of every position: an n-gram window is valid when it stays in one sentence.
    sentence = np.cumsum(stream == 1, dtype=np.int64)
    grams: list[np.ndarray] = []
    raw: list[np.ndarray] = []
    for n in range(1, order + 1):
        starts = np.nonzero(sentence[: len(stream) - n + 1] == sentence[n - 1:])[0]
        windows = np.stack([stream[starts + k] for k in range(n)], axis=1) if len(starts) else np.zeros((0, n), np.int32)
        if n == 1:
            windows = windows[windows[:, 0] != 1]  # <s> is never predicted
        uniq, counts = _unique_rows(windows)
        grams.append(uniq)
        raw.append(counts)
        del windows, starts
    return grams, raw


def _adjusted_counts(grams: list[np.ndarray], raw: list[np.ndarray]) -> list[np.ndarray]:
    """Kneser-Ney's adjusted counts: continuation counts below the highest order, except for
    <s>-initial n-grams, which keep their raw counts."""
    order = len(grams)
    adjusted = [c.copy() for c in raw]
    for n in range(1, order):
        suffixes = grams[n][:, 1:]  # the (n)-gram suffixes of distinct (n+1)-grams
        suf_uniq, suf_counts = _unique_rows(suffixes)
        index = _row_index(grams[n - 1], suf_uniq)
        cont = np.zeros(len(grams[n - 1]), dtype=np.int64)
        cont[index] = suf_counts
        keep_raw = grams[n - 1][:, 0] == 1
        if n == 1:
            keep_raw[:] = False
        adjusted[n - 1] = np.where(keep_raw, raw[n - 1], cont)
    # Safety net: an n-gram without a left extension keeps its raw count.
    for n in range(order):
        adjusted[n] = np.where(adjusted[n] > 0, adjusted[n], raw[n])
    return adjusted


def _unigram_order(vocab_size: int, unigrams: np.ndarray, adjusted: np.ndarray,
                   discount_fallback: tuple[float, float, float]) -> NgramOrder:
    """Order 1 over the whole vocabulary (<unk> and words of --vocab unseen in the text included),
    so that the decoder's words all have a probability: a zero adjusted count leaves the uniform
    share. `unigrams` (N, 1) are the seen ones, `adjusted` (N,) their adjusted counts."""
    uni_counts = np.zeros(vocab_size, dtype=np.int64)
    uni_counts[unigrams[:, 0].astype(np.int64)] = adjusted
    all_ids = np.array([i for i in range(vocab_size) if i != 1], dtype=np.int64)
    d = _discounts(adjusted, discount_fallback)
    a = uni_counts[all_ids]
    total = a.sum()
    disc = _discount_of(a, d)
    gamma = float((disc.sum()) / total)
    p = (a - disc) / total + gamma / len(all_ids)
    # Table includes <s> (id 1) so that it can be a context; its own probability is zero.
    table_words = np.arange(vocab_size, dtype=np.int64)
    prob = np.zeros(vocab_size)
    prob[all_ids] = p
    return NgramOrder(np.zeros(vocab_size, np.int64), table_words, uni_counts, prob, None, d)


def _higher_order(model: NgramModel, grams: np.ndarray, adjusted: np.ndarray,
                  discount_fallback: tuple[float, float, float]) -> NgramOrder:
    """The next order of `model` from its distinct n-grams (N, n) and their adjusted counts (N,):
    discounted probabilities interpolated with the lower order's."""
    g = grams.astype(np.int64)
    a = adjusted
    d = _discounts(a, discount_fallback)
    context = model.lookup(g[:, :-1])
    if (context < 0).any():
        raise AssertionError("an n-gram context is missing from the lower order")
    # Sort by (context index, word) so the table can be searched.
    perm = np.lexsort((g[:, -1], context))
    g, a, context = g[perm], a[perm], context[perm]
    word = g[:, -1]
    disc = _discount_of(a, d)
    # Per context: a(h.), and the discounted mass.
    starts = np.r_[0, np.nonzero(np.diff(context))[0] + 1]
    denom = np.add.reduceat(a, starts).astype(np.float64)
    mass = np.add.reduceat(disc, starts)
    group = np.repeat(np.arange(len(starts)), np.diff(np.r_[starts, len(a)]))
    lower = model.lookup(g[:, 1:])
    if (lower < 0).any():
        raise AssertionError("an n-gram suffix is missing from the lower order")
    p = (a - disc) / denom[group] + (mass / denom)[group] * model.orders[-1].prob[lower]
    return NgramOrder(context, word, a, p, None, d)


def _unique_rows(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distinct rows of an (N, n) int array, sorted lexicographically, with their counts."""
    if len(rows) == 0:
        return rows.reshape(0, rows.shape[1]), np.zeros(0, dtype=np.int64)
    order = np.lexsort(rows.T[::-1])
    rows = rows[order]
    new = np.ones(len(rows), dtype=bool)
    new[1:] = (rows[1:] != rows[:-1]).any(axis=1)
    starts = np.nonzero(new)[0]
    counts = np.diff(np.r_[starts, len(rows)]).astype(np.int64)
    return rows[starts], counts


def _row_index(table: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Index in the lexicographically sorted `table` of each of `rows` (all present)."""
    if table.shape[1] == 1:
        keys, query = table[:, 0].astype(np.int64), rows[:, 0].astype(np.int64)
    else:
        width = np.int64(int(max(table.max(), rows.max())) + 1)
        keys = np.zeros(len(table), dtype=np.int64)
        query = np.zeros(len(rows), dtype=np.int64)
        # Mixed-radix keys; a 32-bit id per column fits two columns per int64 exactly, so compare via
        # a structured view instead when there are more.
        if table.shape[1] * math.log2(int(width)) < 62:
            for k in range(table.shape[1]):
                keys = keys * width + table[:, k]
                query = query * width + rows[:, k]
        else:
            t = np.ascontiguousarray(table.astype(np.int64)).view([("", np.int64)] * table.shape[1]).ravel()
            r = np.ascontiguousarray(rows.astype(np.int64)).view([("", np.int64)] * rows.shape[1]).ravel()
            return np.searchsorted(t, r)
    return np.searchsorted(keys, query)


def _discounts(counts: np.ndarray, fallback: tuple[float, float, float]) -> tuple[float, float, float]:
    n = [int(np.sum(counts == k)) for k in range(1, 5)]
    if min(n) == 0:
        return fallback
    y = n[0] / (n[0] + 2 * n[1])
    d = tuple(k - (k + 1) * y * n[k] / n[k - 1] for k in (1, 2, 3))
    if not all(0 < x < k for x, k in zip(d, (1, 2, 3))):
        return fallback
    return d  # type: ignore[return-value]


def _discount_of(counts: np.ndarray, d: tuple[float, float, float]) -> np.ndarray:
    out = np.zeros(len(counts), dtype=np.float64)
    out[counts == 1] = d[0]
    out[counts == 2] = d[1]
    out[counts >= 3] = d[2]
    return out


def _prune(model: NgramModel, thresholds: list[int]) -> None:
    """Drop n-grams of order >= 2 whose count is <= the order's threshold, or whose context or
    suffix was dropped. Kept n-grams keep their interpolated probability."""
    keep = [np.ones(len(model.orders[0].word), dtype=bool)]
    for n in range(2, model.order + 1):
        threshold = thresholds[min(n - 1, len(thresholds) - 1)] if thresholds else 0
        table = model.orders[n - 1]
        kept = table.count > threshold
        if n > 2:
            kept &= keep[n - 2][table.context]
            suffix = model.lookup(model.tokens(n)[:, 1:])
            kept &= (suffix >= 0) & keep[n - 2][suffix.clip(min=0)]
        keep.append(kept)
    _keep_only(model, keep)


def _prune_entropy(model: NgramModel, threshold: float) -> None:
    """Stolcke's relative-entropy pruning (1998; SRILM's `ngram -prune`, how LibriSpeech's pruned
    LMs were made): drop each n-gram hw (order >= 2) whose removal -- p(w|h) then backs off to
    b'(h) p(w|h') -- raises the model's perplexity by a relative amount below `threshold`, judging
    every n-gram of an order against the unpruned distribution, from the highest order down. An
    n-gram that is the context or the suffix of a kept longer one stays (ARPA needs its prefixes,
    the decoder's backoff its suffixes). Kept n-grams keep their probability; backoffs are set later.

    The cost of removing hw, in nats:  D = -P(h) [ p(w|h) (ln p(w|h') + ln b'(h) - ln p(w|h))
                                                  + (ln b'(h) - ln b(h)) (1 - sum_{v in h} p(v|h)) ]
    with b(h) = (1 - sum_{v in h} p(v|h)) / (1 - sum_{v in h} p(v|h')) over h's explicit words v,
    b'(h) the same with w left out, and P(h) the product of h's own explicit probabilities."""
    history = _history_probs(model)
    keep_from_top: list[np.ndarray] = []  # orders model.order, ..., 2
    protected = np.zeros(0, dtype=bool)
    for n in range(model.order, 1, -1):
        cost, suffix = _removal_costs(model, n, history)
        kept = np.expm1(cost) >= threshold
        if n < model.order:
            kept |= protected
        keep_from_top.append(kept)
        # The n-1-grams that a kept n-gram needs: its context and its suffix.
        protected = np.zeros(len(model.orders[n - 2].word), dtype=bool)
        protected[model.orders[n - 1].context[kept]] = True
        protected[suffix[kept]] = True
    _keep_only(model, [np.ones(len(model.orders[0].word), dtype=bool), *keep_from_top[::-1]])


def _removal_costs(model: NgramModel, n: int, history: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Stolcke's D (nats) of removing each n-gram of order n alone, (N,); and each one's suffix
    h'w as an index into order n-1's table, (N,)."""
    table, lower = model.orders[n - 1], model.orders[n - 2]
    suffix = model.lookup(model.tokens(n)[:, 1:])
    if (suffix < 0).any():
        raise AssertionError("an n-gram suffix is missing from the lower order")
    p, q = table.prob, lower.prob[suffix]
    left = (1.0 - np.bincount(table.context, p, minlength=len(lower.word)))[table.context].clip(min=1e-12)
    left_lower = (1.0 - np.bincount(table.context, q, minlength=len(lower.word)))[table.context].clip(min=1e-12)
    backoff_new = (left + p) / (left_lower + q)
    cost = -history[n - 2][table.context] * (
        p * (np.log(q) + np.log(backoff_new) - np.log(p)) + left * (np.log(backoff_new) - np.log(left / left_lower)))
    return cost, suffix


def _history_probs(model: NgramModel) -> list[np.ndarray]:
    """P(h) for every n-gram h of each order as a history: the product of its words' explicit
    probabilities, p(h1) p(h2|h1) ..., with p(<s>) = 1 (a sentence start is certain)."""
    first = model.orders[0].prob.copy()
    first[1] = 1.0
    history = [first]
    for n in range(2, model.order):
        table = model.orders[n - 1]
        history.append(history[-1][table.context] * table.prob)
    return history


def _keep_only(model: NgramModel, keep: list[np.ndarray]) -> None:
    """Keep the n-grams of each order where keep[order - 1] is True, renumbering the contexts of
    the orders above (each kept n-gram's context must be kept)."""
    new_index = np.cumsum(keep[0]) - 1
    for n in range(2, model.order + 1):
        table = model.orders[n - 1]
        kept = keep[n - 1]
        context = new_index[table.context[kept]]
        model.orders[n - 1] = NgramOrder(context, table.word[kept], table.count[kept], table.prob[kept], None, table.discounts)
        new_index = np.cumsum(kept) - 1


def _set_backoffs(model: NgramModel) -> None:
    """b(h) = (1 - sum_{w: hw kept} p(w|h)) / (1 - sum_{w: hw kept} p(w|h')) for every n-gram h below
    the highest order; 1 for contexts with no continuation (and for the highest order)."""
    for n in range(1, model.order + 1):
        model.orders[n - 1].backoff = np.ones(len(model.orders[n - 1].word))
    for n in range(2, model.order + 1):
        table = model.orders[n - 1]
        if len(table.word) == 0:
            continue
        lower = model.lookup(model.tokens(n)[:, 1:])
        if (lower < 0).any():
            raise AssertionError("an n-gram suffix is missing from the lower order")
        num = np.ones(len(model.orders[n - 2].word))
        den = np.ones(len(model.orders[n - 2].word))
        np.subtract.at(num, table.context, table.prob)
        np.subtract.at(den, table.context, model.orders[n - 2].prob[lower])
        has = np.zeros(len(num), dtype=bool)
        has[table.context] = True
        # Guard against rounding when a context's continuations hold (almost) all of the mass.
        num, den = num.clip(min=1e-12), den.clip(min=1e-12)
        model.orders[n - 2].backoff = np.where(has, num / den, 1.0)


def write_arpa(model: NgramModel, path: str | os.PathLike) -> None:
    """Write the model as an ARPA file (log10 probabilities and backoff weights)."""
    words = np.array(model.words, dtype=object)

    def write(binary: BinaryIO) -> None:
        f = io.TextIOWrapper(binary, encoding="utf-8")
        f.write("\\data\\\n")
        for n, table in enumerate(model.orders, 1):
            f.write(f"ngram {n}={len(table.word)}\n")
        for n, table in enumerate(model.orders, 1):
            f.write(f"\n\\{n}-grams:\n")
            tokens = model.tokens(n)
            with np.errstate(divide="ignore"):
                logp = np.where(table.prob > 0, np.log10(table.prob), LOG10_ZERO)
                logb = np.log10(table.backoff)
            names = [" ".join(row) for row in words[tokens]] if n > 1 else list(words[tokens[:, 0]])
            # The n-grams that end with </s> are never contexts: they get no backoff column.
            last = n == model.order
            end = tokens[:, -1] == 2
            step = 200_000
            for start in range(0, len(names), step):
                stop = start + step
                if last:
                    lines = [f"{p:.6f}\t{w}\n" for p, w in zip(logp[start:stop].tolist(), names[start:stop])]
                else:
                    lines = [
                        f"{p:.6f}\t{w}\n" if e else f"{p:.6f}\t{w}\t{b:.6f}\n"
                        for p, w, b, e in zip(logp[start:stop].tolist(), names[start:stop], logb[start:stop].tolist(), end[start:stop].tolist())
                    ]
                f.write("".join(lines))
        f.write("\n\\end\\\n")
        f.flush()
        f.detach()  # leave the file to write_atomic, which syncs and closes it

    write_atomic(path, write)


def write_lexicon(words: Iterable[str], path: str | os.PathLike, word_separator: str = "|",
                  spell: Callable[[str], list[str]] | None = None) -> int:
    """Flashlight's spelling lexicon: 'word<TAB>w o r d |' per line. Returns the number of words.
    `word_separator` ends each spelling ('' for models that never emit a space between words).
    `spell`: a model's own spelling instead (its tokenizer's `spell`, e.g. BPE pieces '\u2581wo rd')."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    count = 0
    with open(path, "w", encoding="utf-8") as f:
        for word in words:
            if spell is not None:
                try:
                    spelling = " ".join(spell(word))
                except ValueError as e:
                    raise ValueError(f"cannot spell {word!r} with the model's units: {e}") from None
            else:
                spelling = " ".join(word) + (f" {word_separator}" if word_separator else "")
            f.write(f"{word}\t{spelling}\n")
            count += 1
    return count


# KenLM's binary format: flashlight-text (the `lm` extra) bundles KenLM's query code, which maps a binary
# model in a fraction of a second where it parses the shipped 16 MB gzipped ARPA in seconds on every
# start (issue 27). The writer, KenLM's build_binary, ships on PyPI only as C++ source in the `kenlm`
# sdist (its wheels query models only), so `asr lm binary` compiles that one program from the sdist,
# once, into a cache: plain g++ over KenLM's lm/ and util/ sources with zlib, no Boost or CMake needed.
KENLM_SDIST = "kenlm==0.3.0"
KENLM_BINARY_TYPE = "trie"  # probing is ~2x larger (39 MB for the shipped 3-gram, over the 25 MB per file)


def kenlm_cache_dir() -> Path:
    """Where the compiled build_binary is kept: $ASR_CACHE_DIR/kenlm, else ~/.cache/asr/kenlm."""
    from .files import cache_dir

    return cache_dir() / "kenlm"


def find_build_binary() -> Path | None:
    """KenLM's build_binary: $ASR_KENLM_BUILD_BINARY, else one on PATH, else the one `asr lm binary`
    compiled before; None if there is none."""
    import shutil

    given = os.environ.get("ASR_KENLM_BUILD_BINARY")
    if given:
        if not os.access(given, os.X_OK):
            raise FileNotFoundError(f"{given}: $ASR_KENLM_BUILD_BINARY is not an executable file")
        return Path(given)
    on_path = shutil.which("build_binary")
    if on_path:
        return Path(on_path)
    cached = kenlm_cache_dir() / "bin" / "build_binary"
    return cached if os.access(cached, os.X_OK) else None


def compile_build_binary(source: str | os.PathLike | None = None, jobs: int = 0) -> Path:
    """Compile KenLM's build_binary from the `kenlm` sdist (a .tar.gz, or its unpacked folder; None:
    `pip download` it) into kenlm_cache_dir()/bin and return its path. Needs a C++ compiler ($CXX,
    else g++) and zlib's header; raises RuntimeError naming what is missing or what failed."""
    import shutil
    import subprocess
    import sys
    import tarfile
    import tempfile
    from concurrent.futures import ThreadPoolExecutor

    compiler = os.environ.get("CXX", "g++")
    if shutil.which(compiler) is None:
        raise RuntimeError(f"compiling KenLM's build_binary needs a C++ compiler: {compiler!r} is not on PATH "
                           "(install g++, or set $CXX; or put a build_binary on PATH or in $ASR_KENLM_BUILD_BINARY)")
    cache = kenlm_cache_dir()
    with tempfile.TemporaryDirectory(prefix="kenlm-") as work:
        if source is None:
            log.info("downloading the %s sdist with pip", KENLM_SDIST)
            done = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                                   "--no-build-isolation", "--dest", work, KENLM_SDIST],
                                  capture_output=True, text=True)
            found = sorted(Path(work).glob("kenlm-*.tar.gz"))
            if done.returncode != 0 or not found:
                raise RuntimeError(f"pip could not download the {KENLM_SDIST} sdist (give it with --kenlm-source):\n"
                                   f"{done.stderr[-1500:]}")
            source = found[0]
        source = Path(source)
        if source.is_dir():
            tree = source
        elif tarfile.is_tarfile(source):
            with tarfile.open(source) as archive:
                archive.extractall(work, filter="data")
            tree = next((p.parent.parent for p in Path(work).glob("*/lm/build_binary_main.cc")), None)
        else:
            raise RuntimeError(f"{source}: neither a kenlm sdist (.tar.gz) nor its folder")
        if tree is None or not (tree / "lm" / "build_binary_main.cc").is_file():
            raise RuntimeError(f"{source}: no lm/build_binary_main.cc in it, not a kenlm source tree")
        flags = ["-I", str(tree), "-O2", "-DNDEBUG", "-DKENLM_MAX_ORDER=6", "-DHAVE_ZLIB", "-w"]
        sources = [p for d in ("util/double-conversion", "util", "lm") for p in sorted((tree / d).glob("*.cc"))
                   if not p.name.endswith(("test.cc", "main.cc"))]
        objects = [Path(work) / f"{i}.o" for i in range(len(sources))]

        def compile_one(pair: tuple[Path, Path]) -> subprocess.CompletedProcess:
            return subprocess.run([compiler, *flags, "-c", str(pair[0]), "-o", str(pair[1])], capture_output=True, text=True)

        with ThreadPoolExecutor(jobs or os.cpu_count() or 1) as pool:
            for src, done in zip(sources, pool.map(compile_one, zip(sources, objects))):
                if done.returncode != 0:
                    hint = " (zlib's header is missing: install zlib1g-dev)" if "zlib.h" in done.stderr else ""
                    raise RuntimeError(f"compiling {src.relative_to(tree)} failed{hint}:\n{done.stderr[-1500:]}")
        (cache / "bin").mkdir(parents=True, exist_ok=True)
        target = cache / "bin" / "build_binary"
        tmp = target.with_name(f".build_binary.tmp{os.getpid()}")
        done = subprocess.run([compiler, *flags, str(tree / "lm" / "build_binary_main.cc"), *map(str, objects),
                               "-o", str(tmp), "-lz", "-lrt", "-pthread"], capture_output=True, text=True)
        if done.returncode != 0:
            tmp.unlink(missing_ok=True)
            hint = " (zlib is missing: install zlib1g-dev)" if "-lz" in done.stderr else ""
            raise RuntimeError(f"linking build_binary failed{hint}:\n{done.stderr[-1500:]}")
        os.replace(tmp, target)
    return target


def write_kenlm_binary(arpa: str | os.PathLike, out: str | os.PathLike, tool: str | os.PathLike | None = None) -> None:
    """Convert an ARPA model (.arpa or .arpa.gz) to KenLM's binary trie format, unquantized: every
    probability and backoff keeps its float32 value, so decoding scores, and transcripts, stay the
    same (tests/test_lm.py checks the transcripts). `out` appears complete or not at all."""
    import subprocess

    from .files import temp_path

    arpa, out = Path(arpa), Path(out)
    if not arpa.is_file():
        raise FileNotFoundError(f"{arpa}: ARPA file not found")
    tool = Path(tool) if tool else find_build_binary()
    if tool is None:
        raise FileNotFoundError("KenLM's build_binary was not found (run `asr lm binary` once to compile it)")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(out)
    try:
        # -S: memory for the trie's on-disk sort (default 80% of RAM); -T: its temporary files beside `out`.
        done = subprocess.run([str(tool), "-S", "256M", "-T", str(tmp) + ".sort", KENLM_BINARY_TYPE, str(arpa), str(tmp)],
                              capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"{arpa}: build_binary failed: {done.stderr.strip()[-1500:]}")
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)


"""Word timestamps from a CTC forced alignment of the decoded text.

The decoded text is aligned to the model's own log-probs by a CTC Viterbi search (`forced_align_ids`,
numpy: the ONNX runtime aligns without torch), which gives every output frame a label; see
`word_timings` for how words get their start and end. Frame t covers [t * shift, (t + 1) * shift)
seconds, shift = `CTCModel.frame_shift`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from .text import Tokenizer


@dataclass
class Word:
    """A word of a transcript and where it lies in the audio: the one word type of every output."""

    word: str
    start: float  # seconds from the start of the audio
    end: float  # seconds
    # 0..1: the mean, over the frames the alignment gives to the word's units (characters or pieces;
    # blank frames excluded), of the posterior of the unit aligned to the frame.
    confidence: float


def forced_align_ids(log_probs, ids: Sequence[int], blank: int = 0) -> tuple[list[int], list[float]]:
    """(T, V) log-probs (numpy, or a CPU tensor) and a label sequence -> the best CTC path's label per
    frame and its log-prob. Raises ValueError when the text cannot fit in T frames.

    The Viterbi search of torchaudio.functional.forced_align in float32, with its tie rules (a skip
    wins only when strictly better than both others, an advance only when strictly better than
    both, else the path stays; at the end the last label wins only when strictly better than the
    final blank), so both give the same path."""
    lp = np.asarray(log_probs, dtype=np.float32)
    ids = list(ids)
    frames = lp.shape[0]
    repeats = sum(1 for a, b in zip(ids, ids[1:]) if a == b)
    if len(ids) + repeats > frames:
        raise ValueError(f"cannot align {len(ids)} labels to {frames} frames")
    if not ids:
        return [blank] * frames, lp[:, blank].tolist()
    labels = np.full(2 * len(ids) + 1, blank, dtype=np.int64)  # blank, id0, blank, id1, ..., blank
    labels[1::2] = ids
    states = labels.shape[0]
    skip = np.zeros(states, dtype=bool)  # a label state may be entered from two states back: a different label
    skip[3::2] = labels[3::2] != labels[1:-2:2]
    emit = lp[:, labels]  # (T, S)
    neg_inf = np.float32(-np.inf)
    alpha = np.full(states, neg_inf, dtype=np.float32)
    alpha[:2] = emit[0, :2]
    back = np.zeros((frames, states), dtype=np.int8)
    for t in range(1, frames):
        stay = alpha
        advance = np.concatenate([[neg_inf], alpha[:-1]])
        jump = np.where(skip, np.concatenate([[neg_inf, neg_inf], alpha[:-2]]), neg_inf)
        take_jump = (jump > advance) & (jump > stay)
        take_advance = ~take_jump & (advance > stay) & (advance > jump)
        back[t] = np.where(take_jump, 2, np.where(take_advance, 1, 0))
        alpha = np.where(take_jump, jump, np.where(take_advance, advance, stay)) + emit[t]
    state = states - 1 if alpha[-1] > alpha[-2] else states - 2
    path = [0] * frames
    for t in range(frames - 1, -1, -1):
        path[t] = int(labels[state])
        state -= int(back[t, state])
    return path, lp[np.arange(frames), path].tolist()


def word_timings(
    log_probs: np.ndarray,
    text: str,
    tokenizer: Tokenizer,
    frame_shift: float,
    offset: float = 0.0,
) -> list[Word]:
    """Start/end seconds of each word of `text` (normalized, single spaces) in an utterance whose
    CTC log-probs are `log_probs` (T, V).

    Each word is encoded on its own, so its units are known (BPE pieces never span words: each
    word's first piece starts with '\u2581', the same pieces as in the whole text). The text is
    aligned with the tokenizer's word separator (the char tokenizer's space) before every word, the
    first included, when it has one. A word ends after the last frame of its last unit. It starts
    right after the separator before it: a bidirectional CTC model fires a word's characters in a
    burst near the word's end, so the first character's frame is late (by 0.3 s on average on FSDD
    digits), while the separator lands at the onset of the next word (about 20 ms off there).
    Without a separator (BPE, or an alphabet without a space) a word starts at its first unit's frame.
    `offset`: seconds added to every time (where the frames start in a longer recording)."""
    words = text.split()
    if not words:
        return []
    separator = tokenizer.word_separator
    ids: list[int] = []
    owner: list[int] = []  # word index of each label; separators belong to the word they precede, as -1 - w
    for w, word in enumerate(words):
        if separator is not None:
            ids.append(separator)
            owner.append(-1 - w)
        for c in tokenizer.encode(word):
            ids.append(c)
            owner.append(w)
    path, scores = forced_align_ids(log_probs, ids, tokenizer.blank)
    first = [-1] * len(words)  # first frame of the word's first unit
    after_separator = [-1] * len(words)  # first frame after the separator before the word
    last = [-1] * len(words)
    probs: list[list[float]] = [[] for _ in words]
    position = -1  # index into ids of the label occupying the current frame
    previous = tokenizer.blank
    for t, (label, score) in enumerate(zip(path, scores)):
        if label != tokenizer.blank and label != previous:
            position += 1  # a new label starts (a repeat always has a blank in between)
        previous = label
        if label == tokenizer.blank or position < 0:
            continue
        w = owner[position]
        if w < 0:
            after_separator[-1 - w] = t + 1
            continue
        if first[w] < 0:
            first[w] = t
        last[w] = t
        probs[w].append(math.exp(score))
    timings = []
    for w, word in enumerate(words):
        start = after_separator[w] if 0 <= after_separator[w] <= first[w] else first[w]
        start, end = round(start * frame_shift, 3), round((last[w] + 1) * frame_shift, 3)
        if offset:
            start, end = round(start + offset, 3), round(end + offset, 3)
        timings.append(Word(word, start, end, round(sum(probs[w]) / len(probs[w]), 3)))
    return timings

"""Word timestamps from a CTC forced alignment of the decoded text, and subtitle/JSON formatting.

The decoded text is aligned to the model's own log-probs with torchaudio's CTC Viterbi aligner
(`torchaudio.functional.forced_align`), which gives every output frame a label; see `word_timings`
for how words get their start and end. Frame t covers [t * shift, (t + 1) * shift) seconds,
shift = `CTCModel.frame_shift`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch

from .audio import AudioError
from .text import Tokenizer


@dataclass
class WordTiming:
    word: str
    start: float  # seconds
    end: float  # seconds
    # The word's confidence (0..1): the mean, over the frames the alignment gives to the word's units
    # (characters or pieces; blank frames excluded), of the posterior of the unit aligned to the frame.
    score: float


def forced_align_ids(log_probs: torch.Tensor, ids: Sequence[int], blank: int = 0) -> tuple[list[int], list[float]]:
    """(T, V) log-probs and a label sequence -> the best CTC path's label per frame and its log-prob.

    Uses torchaudio.functional.forced_align (deprecated in some torchaudio releases, hence the
    import here); raises ValueError when the text cannot fit in T frames."""
    import torchaudio.functional as F

    ids = list(ids)
    frames = log_probs.shape[0]
    repeats = sum(1 for a, b in zip(ids, ids[1:]) if a == b)
    if len(ids) + repeats > frames:
        raise ValueError(f"cannot align {len(ids)} labels to {frames} frames")
    if not ids:
        return [blank] * frames, log_probs[:, blank].tolist()
    emission = log_probs.detach().float().cpu().unsqueeze(0).contiguous()
    targets = torch.tensor([ids], dtype=torch.int32)
    labels, scores = F.forced_align(emission, targets, blank=blank)
    return labels[0].tolist(), scores[0].tolist()


def word_timings(
    log_probs: torch.Tensor,
    text: str,
    tokenizer: Tokenizer,
    frame_shift: float,
) -> list[WordTiming]:
    """Start/end seconds of each word of `text` (normalized, single spaces) in an utterance whose
    CTC log-probs are `log_probs` (T, V).

    Each word is encoded on its own, so its units are known (BPE pieces never span words: each
    word's first piece starts with '\u2581', the same pieces as in the whole text). The text is
    aligned with the tokenizer's word separator (the char tokenizer's space) before every word, the
    first included, when it has one. A word ends after the last frame of its last unit. It starts
    right after the separator before it: a bidirectional CTC model fires a word's characters in a
    burst near the word's end, so the first character's frame is late (by 0.3 s on average on FSDD
    digits), while the separator lands at the onset of the next word (about 20 ms off there).
    Without a separator (BPE, or an alphabet without a space) a word starts at its first unit's frame."""
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
        timings.append(WordTiming(word, round(start * frame_shift, 3), round((last[w] + 1) * frame_shift, 3),
                                  round(sum(probs[w]) / len(probs[w]), 3)))
    return timings


# --- output formats ---------------------------------------------------------------------------------

def group_cues(words: Sequence[WordTiming], max_words: int = 7, max_seconds: float = 5.0, max_gap: float = 1.0) -> list[tuple[float, float, str]]:
    """Words -> subtitle cues (start, end, text): a cue ends after `max_words`, when it would last
    longer than `max_seconds`, or at a pause longer than `max_gap`."""
    cues: list[tuple[float, float, str]] = []
    current: list[WordTiming] = []
    for word in words:
        if current and (len(current) >= max_words or word.end - current[0].start > max_seconds
                        or word.start - current[-1].end > max_gap):
            cues.append((current[0].start, current[-1].end, " ".join(x.word for x in current)))
            current = []
        current.append(word)
    if current:
        cues.append((current[0].start, current[-1].end, " ".join(x.word for x in current)))
    return cues


def _clock(seconds: float, decimal: str) -> str:
    ms = int(round(max(seconds, 0.0) * 1000))
    h, ms = divmod(ms, 3_600_000)
    m, ms = divmod(ms, 60_000)
    s, ms = divmod(ms, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}{decimal}{ms:03d}"


def format_srt(words: Sequence[WordTiming]) -> str:
    """SubRip: numbered cues 'HH:MM:SS,mmm --> HH:MM:SS,mmm' followed by the text and a blank line."""
    blocks = [f"{i}\n{_clock(a, ',')} --> {_clock(b, ',')}\n{text}\n" for i, (a, b, text) in enumerate(group_cues(words), 1)]
    return "\n".join(blocks)


def format_vtt(words: Sequence[WordTiming]) -> str:
    """WebVTT: a 'WEBVTT' header, then cues 'HH:MM:SS.mmm --> HH:MM:SS.mmm' with their text."""
    blocks = [f"{_clock(a, '.')} --> {_clock(b, '.')}\n{text}\n" for a, b, text in group_cues(words)]
    return "WEBVTT\n\n" + "\n".join(blocks)


def words_to_json(words: Sequence[WordTiming]) -> list[dict]:
    """[{"word", "start", "end", "confidence"}]: the score is named for what it is in the output."""
    return [{"word": w.word, "start": w.start, "end": w.end, "confidence": w.score} for w in words]


def format_word_lines(path: str, words: Sequence[WordTiming]) -> str:
    """Plain text: 'path<TAB>start<TAB>end<TAB>word' per word."""
    return "".join(f"{path}\t{w.start:.3f}\t{w.end:.3f}\t{w.word}\n" for w in words)


# --- files in, n-best lists and word timings out ------------------------------------------------------

@dataclass
class DetailedTranscript:
    path: str
    text: str = ""
    duration: float = 0.0
    error: str = ""
    warning: str = ""  # read but too short to transcribe: text "" (asr.transcribe.too_short_warning)
    nbest: list | None = None  # [(text, score)], best first
    words: list[WordTiming] | None = None


def transcribe_files_detailed(model, tokenizer: Tokenizer, paths, device, decoder, batch_seconds: float = 300.0,
                              timestamps: bool = False, progress: bool = False, chunk_seconds: float = 30.0,
                              chunk_overlap: float = 4.0) -> list[DetailedTranscript]:
    """Like asr.transcribe.transcribe_files, with any decoder of asr.decode.make_decoder, n-best lists,
    and (timestamps=True) word timings from a forced alignment of the best hypothesis.

    Files longer than `chunk_seconds` (0: none) are run through the model in chunks
    (asr.transcribe.long_log_probs); their frames are then cut at pauses into pieces of at most
    `chunk_seconds`, each decoded and aligned on its own, so neither the search nor the alignment
    grows with the file. Their n-best list holds only the joined best hypothesis."""
    from .decode import decode_waves
    from .transcribe import (
        load_files, long_file_test, long_log_probs, min_audio_samples, pause_segments, too_short_warning,
    )

    rate, min_samples = model.feature_config.sample_rate, min_audio_samples(model)
    results, readable, waves, long_files = load_files(paths, rate, DetailedTranscript, min_samples=min_samples,
                                                      defer=long_file_test(model, chunk_seconds, chunk_overlap))
    hyps, log_probs = decode_waves(model, decoder, waves, device, batch_seconds, progress, keep_log_probs=timestamps)
    for i, (result, nbest) in enumerate(zip(readable, hyps)):
        result.text = nbest[0].text if nbest else ""
        result.nbest = [(h.text, h.score) for h in nbest]
        if timestamps:
            result.words = _clip_words(word_timings(log_probs[i], result.text, tokenizer, model.frame_shift), result.duration)
    for result in long_files:
        try:
            frames, result.duration = long_log_probs(model, result.path, device, chunk_seconds, chunk_overlap,
                                                     batch_seconds, progress)
        except AudioError as e:
            result.error = str(e)
            continue
        result.warning = too_short_warning(result.path, round(result.duration * rate), min_samples, rate)
        if result.warning:  # only when chunk_seconds is shorter than that
            continue
        max_frames = max(1, int(chunk_seconds / model.frame_shift))
        texts, score, words = [], 0.0, []
        for start, end in pause_segments(frames, tokenizer.blank, max_frames, max_frames // 3,
                                          tokenizer.word_separator, tokenizer.word_start_ids):
            piece = frames[start:end]
            best = decoder(piece.unsqueeze(0).to(device), torch.tensor([end - start], device=device))[0][0]
            if best.text:
                texts.append(best.text)
            score += best.score
            if timestamps:
                offset = start * model.frame_shift
                words += [WordTiming(w.word, round(w.start + offset, 3), round(w.end + offset, 3), w.score)
                          for w in word_timings(piece, best.text, tokenizer, model.frame_shift)]
        result.text = " ".join(texts)
        result.nbest = [(result.text, score)]
        if timestamps:
            result.words = _clip_words(words, result.duration)
    for result in results:
        if result.warning:  # too short: an empty transcript, like a file of silence
            result.nbest, result.words = [("", 0.0)], [] if timestamps else None
    return results


def _clip_words(words: list[WordTiming], duration: float) -> list[WordTiming]:
    """The last frame may reach past the end of the audio: keep timings inside it."""
    return [WordTiming(w.word, min(w.start, duration), min(w.end, duration), w.score) for w in words]

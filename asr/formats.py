"""Writing transcripts out: subtitles (SRT, WebVTT), JSON objects and word lines, shared by `asr
transcribe` and `asr serve`."""

from __future__ import annotations

import json
from typing import Sequence

from .align import Word
from .transcribe import Transcript


def group_cues(words: Sequence[Word], max_words: int = 7, max_seconds: float = 5.0, max_gap: float = 1.0) -> list[tuple[float, float, str]]:
    """Words -> subtitle cues (start, end, text): a cue ends after `max_words`, when it would last
    longer than `max_seconds`, or at a pause longer than `max_gap`."""
    cues: list[tuple[float, float, str]] = []
    current: list[Word] = []
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


def format_srt(words: Sequence[Word]) -> str:
    """SubRip: numbered cues 'HH:MM:SS,mmm --> HH:MM:SS,mmm' followed by the text and a blank line."""
    blocks = [f"{i}\n{_clock(a, ',')} --> {_clock(b, ',')}\n{text}\n" for i, (a, b, text) in enumerate(group_cues(words), 1)]
    return "\n".join(blocks)


def format_vtt(words: Sequence[Word]) -> str:
    """WebVTT: a 'WEBVTT' header, then cues 'HH:MM:SS.mmm --> HH:MM:SS.mmm' with their text."""
    blocks = [f"{_clock(a, '.')} --> {_clock(b, '.')}\n{text}\n" for a, b, text in group_cues(words)]
    return "WEBVTT\n\n" + "\n".join(blocks)


def words_to_json(words: Sequence[Word]) -> list[dict]:
    """[{"word", "start", "end", "confidence"}]."""
    return [{"word": w.word, "start": w.start, "end": w.end, "confidence": w.confidence} for w in words]


def format_word_lines(path: str, words: Sequence[Word]) -> str:
    """Plain text: 'path<TAB>start<TAB>end<TAB>word' per word."""
    return "".join(f"{path}\t{w.start:.3f}\t{w.end:.3f}\t{w.word}\n" for w in words)


def transcript_json(result: Transcript, nbest: bool = False) -> dict:
    """One file's JSON object: path, text, duration, and its warning, words (with timestamps) and
    n-best list (`nbest`) when it has them; a file that failed: path and error."""
    if result.error:
        return {"path": result.path, "error": result.error}
    obj = {"path": result.path, "text": result.text, "duration": round(result.duration, 3)}
    if result.warning:
        obj["warning"] = result.warning
    if result.words is not None:
        obj["words"] = words_to_json(result.words)
    if nbest and result.nbest is not None:
        obj["nbest"] = [{"text": t, "score": round(score, 4)} for t, score in result.nbest]
    return obj


def json_line(obj: dict) -> str:
    return json.dumps(obj, ensure_ascii=False)  # file names and text as written, not \u escapes

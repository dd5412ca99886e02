"""asr.formats: SRT and WebVTT cues parse back to the word times, long runs split into cues, and a
transcript's JSON object holds what it has (words, warning, n-best) or its error."""

from __future__ import annotations

import re

from asr.align import Word
from asr.formats import format_srt, format_vtt, format_word_lines, group_cues, transcript_json
from asr.transcribe import Transcript

SRT_CUE = re.compile(r"(\d+)\n(\d\d):(\d\d):(\d\d),(\d\d\d) --> (\d\d):(\d\d):(\d\d),(\d\d\d)\n(.+)\n")
VTT_CUE = re.compile(r"(\d\d):(\d\d):(\d\d)\.(\d\d\d) --> (\d\d):(\d\d):(\d\d)\.(\d\d\d)\n(.+)\n")


def parse_srt(text: str) -> list[tuple[float, float, str]]:
    """A strict SubRip reader: numbered cues separated by one blank line, nothing else."""
    blocks = text.split("\n\n") if text else []
    cues = []
    for i, block in enumerate(blocks, 1):
        block = block if block.endswith("\n") else block + "\n"
        m = SRT_CUE.fullmatch(block)
        assert m, f"not an SRT cue: {block!r}"
        assert int(m[1]) == i
        g = [int(x) for x in m.groups()[1:9]]
        cues.append((g[0] * 3600 + g[1] * 60 + g[2] + g[3] / 1000, g[4] * 3600 + g[5] * 60 + g[6] + g[7] / 1000, m[10]))
    return cues


def parse_vtt(text: str) -> list[tuple[float, float, str]]:
    assert text.startswith("WEBVTT\n\n")
    body = text[len("WEBVTT\n\n"):]
    cues = []
    for block in body.split("\n\n") if body else []:
        block = block if block.endswith("\n") else block + "\n"
        m = VTT_CUE.fullmatch(block)
        assert m, f"not a WebVTT cue: {block!r}"
        g = [int(x) for x in m.groups()[:8]]
        cues.append((g[0] * 3600 + g[1] * 60 + g[2] + g[3] / 1000, g[4] * 3600 + g[5] * 60 + g[6] + g[7] / 1000, m[9]))
    return cues


WORDS = [Word("hello", 0.5, 0.9, 0.9), Word("world", 1.0, 1.4, 0.8), Word("again", 3.2, 3.6, 0.7),
         Word("and", 3.7, 3.8, 0.9), Word("an", 3661.0, 3661.25, 0.9)]


def test_srt_and_vtt_parse_and_keep_the_times():
    srt = parse_srt(format_srt(WORDS))
    vtt = parse_vtt(format_vtt(WORDS))
    assert srt == vtt
    # A pause longer than a second starts a new cue.
    assert [c[2] for c in srt] == ["hello world", "again and", "an"]
    assert srt[0][:2] == (0.5, 1.4) and srt[2][:2] == (3661.0, 3661.25)
    assert format_srt([]) == "" and parse_vtt(format_vtt([])) == []


def test_cues_split_long_runs():
    words = [Word(f"w{i}", i * 0.4, i * 0.4 + 0.3, 1.0) for i in range(20)]
    cues = group_cues(words, max_words=7, max_seconds=5.0)
    assert [len(c[2].split()) for c in cues] == [7, 7, 6]
    assert all(b - a <= 5.0 for a, b, _ in cues)


def test_transcript_json_and_word_lines():
    result = Transcript("a.wav", "hello world", 1.5, words=WORDS[:2], nbest=[("hello world", -1.23456), ("hello", -2.0)])
    assert transcript_json(result) == {"path": "a.wav", "text": "hello world", "duration": 1.5, "words": [
        {"word": "hello", "start": 0.5, "end": 0.9, "confidence": 0.9},
        {"word": "world", "start": 1.0, "end": 1.4, "confidence": 0.8}]}
    assert transcript_json(result, nbest=True)["nbest"] == [{"text": "hello world", "score": -1.2346},
                                                           {"text": "hello", "score": -2.0}]
    short = Transcript("b.wav", duration=0.05, warning="b.wav: too short")
    assert transcript_json(short) == {"path": "b.wav", "text": "", "duration": 0.05, "warning": "b.wav: too short"}
    assert transcript_json(Transcript("c.wav", error="c.wav: no such file")) == {"path": "c.wav", "error": "c.wav: no such file"}
    assert format_word_lines("a.wav", WORDS[:2]) == "a.wav\t0.500\t0.900\thello\na.wav\t1.000\t1.400\tworld\n"

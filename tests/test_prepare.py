"""asr.corpora: LibriSpeech and FSDD importers, their validation and the summary."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile

from asr.data import read_manifest, write_manifest
from asr.corpora.common import PrepareResult, reason_category
from asr.corpora.fsdd import prepare_fsdd
from asr.corpora.librispeech import prepare_librispeech
from asr.text import BLANK, CharTokenizer

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def _opus_supported() -> bool:
    return "OPUS" in soundfile.available_subtypes("OGG")


def _tone(seconds: float, sr: int = 16000) -> np.ndarray:
    n = int(round(seconds * sr))
    return (0.3 * np.sin(2 * np.pi * 330.0 * np.arange(n) / sr)).astype(np.float32)


def _write(path: Path, seconds: float, sr: int = 16000, **kwargs) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    soundfile.write(str(path), _tone(seconds, sr), sr, **kwargs)
    return path


def _trans(folder: Path, name: str, lines: list[str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text("\n".join(lines) + "\n", encoding="utf-8")


SHORT_TEXT = "THIS TRANSCRIPT IS FAR TOO LONG FOR ONLY A FIFTH OF A SECOND"  # 60 characters


@pytest.fixture
def libri(tmp_path) -> Path:
    """A LibriSpeech-layout split with three good utterances (FLAC, WAV, Opus) plus one of each defect."""
    root = tmp_path / "LibriSpeech" / "dev-clean"
    ch1 = root / "100" / "200"
    _trans(ch1, "100-200.trans.txt", [
        "100-200-0000 HELLO WORLD",
        "100-200-0001 IT'S THE SPEAKER'S VOICE",
        "100-200-0002 THIS LINE HAS NO AUDIO",
        "100-200-0003 CORRUPT AUDIO",
        "100-200-0004 EMPTY AUDIO",
        "100-200-0005 THE ZEBRA WALKED",
        "100-200-0006 A LONG ONE",
        f"100-200-0007 {SHORT_TEXT}",
        "100-200-0008 -- !! ..",
        "",
    ])
    _write(ch1 / "100-200-0000.flac", 1.0)
    _write(ch1 / "100-200-0001.flac", 2.5)
    (ch1 / "100-200-0003.flac").write_bytes(np.random.default_rng(0).bytes(4000))
    soundfile.write(str(ch1 / "100-200-0004.wav"), np.zeros(0, dtype=np.float32), 16000)
    _write(ch1 / "100-200-0005.flac", 1.0)
    _write(ch1 / "100-200-0006.flac", 3.0)
    _write(ch1 / "100-200-0007.flac", 0.2)
    _write(ch1 / "100-200-0008.flac", 1.0)
    _write(ch1 / "100-200-0009.flac", 1.0)  # no transcript line names it

    ch2 = root / "300" / "400"
    lines = ["300-400-0000 A WAV FILE", "300-400-0002 DASH-ED WORDS, AND PUNCTUATION!"]
    _write(ch2 / "300-400-0000.wav", 1.25)
    _write(ch2 / "300-400-0002.flac", 1.75)
    if _opus_supported():
        lines.insert(1, "300-400-0001 AN OPUS FILE")
        _write(ch2 / "300-400-0001.opus", 1.5, format="OGG", subtype="OPUS")
    _trans(ch2, "300-400.trans.txt", lines)
    return root


NO_Z = CharTokenizer([BLANK, " ", "'", *"abcdefghijklmnopqrstuvwxy"])


def _expected_kept() -> list[tuple[str, float, str, str, str]]:
    rows = [
        ("100-200-0000", 1.0, "hello world", "100", "100-200-0000.flac"),
        ("100-200-0001", 2.5, "it's the speaker's voice", "100", "100-200-0001.flac"),
        ("300-400-0000", 1.25, "a wav file", "300", "300-400-0000.wav"),
        ("300-400-0001", 1.5, "an opus file", "300", "300-400-0001.opus"),
        ("300-400-0002", 1.75, "dash ed words and punctuation", "300", "300-400-0002.flac"),
    ]
    return [r for r in rows if _opus_supported() or not r[4].endswith(".opus")]


def test_librispeech_manifest_entry_by_entry(libri):
    result = prepare_librispeech(libri, tokenizer=NO_Z, max_duration=2.8, progress=False)
    expected = _expected_kept()
    assert [u.id for u in result.kept] == [r[0] for r in expected]  # sorted by id
    for utt, (utt_id, duration, text, speaker, filename) in zip(result.kept, expected):
        assert utt.id == utt_id
        assert utt.duration == pytest.approx(duration, abs=1e-3)
        assert utt.text == text
        assert utt.speaker == speaker
        assert Path(utt.audio).is_absolute()
        assert Path(utt.audio).name == filename and Path(utt.audio).is_file()
        assert utt.start is None and utt.end is None


def test_librispeech_every_defect_is_skipped_with_its_reason(libri):
    result = prepare_librispeech(libri, tokenizer=NO_Z, max_duration=2.8, progress=False)
    assert len(result.kept) == len(_expected_kept())
    ch1 = libri / "100" / "200"
    reasons = dict(result.skipped)
    assert len(reasons) == len(result.skipped) == 8
    assert {key: reason_category(r) for key, r in reasons.items()} == {
        "100-200-0002": "no audio file",
        str(ch1 / "100-200-0009.flac"): "no transcript line",
        "100-200-0003": "unreadable audio",
        "100-200-0004": "empty audio",
        "100-200-0005": "characters outside the tokenizer",
        "100-200-0006": "too long",
        "100-200-0007": "too short for CTC",
        "100-200-0008": "empty transcript",
    }
    assert "100-200.trans.txt" in reasons[str(ch1 / "100-200-0009.flac")]
    assert str(ch1 / "100-200-0003.flac") in reasons["100-200-0003"]
    assert str(ch1 / "100-200-0004.wav") in reasons["100-200-0004"]
    assert "'z'" in reasons["100-200-0005"]
    assert "3.000 s > max_duration 2.8 s" in reasons["100-200-0006"]
    assert "60 labels > 5 encoder frames" in reasons["100-200-0007"]
    assert str(ch1) in reasons["100-200-0002"]


def test_librispeech_limits_are_optional(libri):
    """Without tokenizer and max_duration the 'zebra' and the 3 s utterance are kept; a higher
    frame rate makes the 0.2 s utterance long enough for its 60 labels."""
    result = prepare_librispeech(libri, frames_per_second=400.0, progress=False)
    ids = {u.id for u in result.kept}
    assert {"100-200-0005", "100-200-0006", "100-200-0007"} <= ids
    assert len(result.kept) == len(_expected_kept()) + 3
    assert {reason_category(r) for _, r in result.skipped} == {
        "no audio file", "no transcript line", "unreadable audio", "empty audio", "empty transcript"}
    zebra = next(u for u in result.kept if u.id == "100-200-0005")
    assert zebra.text == "the zebra walked"


def test_librispeech_finds_splits_recursively_and_round_trips(libri, tmp_path):
    # Point at the folder above the split: transcripts are found recursively.
    parent = prepare_librispeech(libri.parent, tokenizer=NO_Z, max_duration=2.8)  # progress bar on
    direct = prepare_librispeech(libri, tokenizer=NO_Z, max_duration=2.8, progress=False)
    assert parent.kept == direct.kept
    write_manifest(tmp_path / "m.jsonl", parent.kept)
    assert read_manifest(tmp_path / "m.jsonl") == parent.kept


def test_librispeech_audio_without_any_transcript_file_and_duplicates(tmp_path):
    root = tmp_path / "corpus"
    _trans(root / "1" / "2", "1-2.trans.txt", ["1-2-0000 ONE", "1-2-0000 ONE AGAIN"])
    _write(root / "1" / "2" / "1-2-0000.flac", 0.5)
    _write(root / "1" / "2" / "1-2-0000.wav", 0.5)  # same utterance in a second format: not an orphan
    _write(root / "5" / "6" / "5-6-0000.flac", 0.5)  # chapter without a .trans.txt
    result = prepare_librispeech(root, progress=False)
    assert [u.id for u in result.kept] == ["1-2-0000"]
    assert result.kept[0].audio.endswith(".flac")  # lossless preferred
    assert result.kept[0].text == "one"
    reasons = dict(result.skipped)
    assert reason_category(reasons["1-2-0000"]) == "duplicate utterance id"
    assert reasons[str(root / "5" / "6" / "5-6-0000.flac")] == "no transcript line: no *.trans.txt in this folder"
    assert len(result.skipped) == 2


def test_librispeech_missing_or_empty_folder(tmp_path):
    with pytest.raises(FileNotFoundError):
        prepare_librispeech(tmp_path / "nowhere")
    result = prepare_librispeech(tmp_path, progress=False)
    assert result.kept == []
    assert [reason_category(r) for _, r in result.skipped] == ["no transcripts"]


def test_summary_reports_counts_and_reasons(libri):
    result = prepare_librispeech(libri, tokenizer=NO_Z, max_duration=2.8, progress=False)
    text = result.summary("dev-clean")
    lines = text.splitlines()
    n = len(_expected_kept())
    assert lines[0].startswith(f"dev-clean: {n} utterances kept, ")
    assert "2 speakers" in lines[0]
    vocabulary = {w for u in result.kept for w in u.text.split()}
    assert f"vocabulary {len(vocabulary)} words" in lines[0]
    assert lines[1] == f"{n} kept, 8 skipped"
    assert any(line.split() == ["1", "too", "short", "for", "CTC"] for line in lines)
    for key, reason in result.skipped:
        assert f"  {key}: {reason}" in lines
    assert PrepareResult().summary("x").splitlines() == [
        "x: 0 utterances kept, 0.00 hours, 0 speakers, vocabulary 0 words", "0 kept, 0 skipped"]


# --------------------------------------------------------------------------- FSDD


@pytest.fixture
def fsdd(tmp_path) -> Path:
    rec = tmp_path / "fsdd" / "recordings"
    for name, seconds in [("3_jackson_0", 0.4), ("3_jackson_7", 0.5), ("0_theo_4", 0.3),
                          ("9_nicolas_49", 0.6), ("5_george_5", 0.45)]:
        _write(rec / f"{name}.wav", seconds, sr=8000)
    (rec / "7_lucas_10.wav").write_bytes(b"RIFF" + np.random.default_rng(1).bytes(100))
    _write(rec / "notes.wav", 0.2, sr=8000)
    (rec / "README.md").write_text("not audio\n")
    return tmp_path / "fsdd"


def test_fsdd_official_split_texts_and_speakers(fsdd):
    train = prepare_fsdd(fsdd, "train", progress=False)
    test = prepare_fsdd(fsdd, "test", progress=False)
    everything = prepare_fsdd(fsdd / "recordings", "all", progress=False)  # recordings/ itself works too
    assert [u.id for u in train.kept] == ["3_jackson_7", "5_george_5", "9_nicolas_49"]
    assert [u.id for u in test.kept] == ["0_theo_4", "3_jackson_0"]
    assert [u.id for u in everything.kept] == sorted(u.id for u in train.kept + test.kept)
    by_id = {u.id: u for u in everything.kept}
    assert by_id["3_jackson_7"].text == "three" and by_id["3_jackson_7"].speaker == "jackson"
    assert by_id["0_theo_4"].text == "zero" and by_id["0_theo_4"].speaker == "theo"
    assert by_id["9_nicolas_49"].text == "nine" and by_id["9_nicolas_49"].speaker == "nicolas"
    assert by_id["5_george_5"].text == "five"
    assert by_id["9_nicolas_49"].duration == pytest.approx(0.6, abs=1e-3)
    assert by_id["0_theo_4"].duration == pytest.approx(0.3, abs=1e-3)
    assert Path(by_id["0_theo_4"].audio).is_absolute()


def test_fsdd_bad_files_are_skipped(fsdd):
    train = dict(prepare_fsdd(fsdd, "train", progress=False).skipped)
    assert reason_category(train["7_lucas_10"]) == "unreadable audio"  # index 10: train only
    assert reason_category(train[str(fsdd / "recordings" / "notes.wav")]) == "unexpected file name"
    assert len(train) == 2
    test = dict(prepare_fsdd(fsdd, "test", progress=False).skipped)
    assert "7_lucas_10" not in test
    with pytest.raises(ValueError, match="split"):
        prepare_fsdd(fsdd, "dev")
    with pytest.raises(FileNotFoundError):
        prepare_fsdd(fsdd / "missing", "all")


def test_fsdd_optional_ctc_check(tmp_path):
    _write(tmp_path / "recordings" / "3_theo_9.wav", 0.19, sr=8000)  # 4 frames at 25/s, 'three' needs 5
    assert len(prepare_fsdd(tmp_path, "all", progress=False).kept) == 1
    result = prepare_fsdd(tmp_path, "all", frames_per_second=25.0, progress=False)
    assert result.kept == []
    assert reason_category(dict(result.skipped)["3_theo_9"]) == "too short for CTC"


# --------------------------------------------------------------------------- real data


def test_real_librispeech_dev_split():
    corpus = SHARED_DATA / "libri-other" / "dev"
    if not corpus.is_dir():
        pytest.skip(f"{corpus} not present")
    result = prepare_librispeech(corpus, tokenizer=CharTokenizer(), progress=False)
    assert len(result.kept) == 206
    assert result.skipped == []
    assert {u.speaker for u in result.kept} == {"4959", "6135"}
    hours = sum(u.duration for u in result.kept) / 3600
    assert hours == pytest.approx(0.73, abs=0.01)
    assert [u.id for u in result.kept] == sorted(u.id for u in result.kept)
    assert all(u.text and u.text == u.text.lower() for u in result.kept)

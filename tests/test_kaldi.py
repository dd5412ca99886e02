"""Kaldi data directories in both directions: prepare_kaldi (import) and export_kaldi / `asr export kaldi`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile

from asr.cli import main
from asr.data import Utterance, read_manifest, write_manifest
from asr.corpora.common import reason_category
from asr.corpora.kaldi import export_kaldi, prepare_kaldi


def _wav(path: Path, seconds: float, sr: int = 16000) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    soundfile.write(str(path), (0.2 * np.sin(np.arange(int(seconds * sr)) * 0.05)).astype(np.float32), sr)
    return path


def _write(folder: Path, name: str, lines: list[str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text("".join(line + "\n" for line in lines), encoding="utf-8")


def _reasons(result) -> dict[str, str]:
    return {key: reason_category(reason) for key, reason in result.skipped}


def test_import_plain_paths_pipes_and_markers(tmp_path, monkeypatch):
    audio = tmp_path / "audio"
    _wav(audio / "a.wav", 1.0)
    _wav(audio / "b.wav", 2.0)
    data = tmp_path / "recipe" / "data" / "train"
    _write(data, "wav.scp", [
        f"spk1-a {audio / 'a.wav'}",
        "spk1-b ../audio/b.wav",                                    # relative to the folder Kaldi runs in
        "spk2-c sph2pipe -f wav -p -c 1 /corpus/c.sph |",
        "spk2-d /data/raw.ark:1234",
        "spk2-e /nowhere/e.wav",
    ])
    _write(data, "text", [
        "spk1-a HELLO <UNK> WORLD [noise]",
        "spk1-b IT'S  me",
        "spk2-c PIPED",
        "spk2-d ARK",
        "spk2-e MISSING",
        "spk2-f NO AUDIO LINE",
    ])
    _write(data, "utt2spk", ["spk1-a spk1", "spk1-b spk1", "spk2-c spk2", "spk2-d spk2", "spk2-e spk2", "spk2-f spk2"])
    monkeypatch.chdir(tmp_path / "recipe")  # relative wav.scp paths start here, as in a Kaldi recipe
    result = prepare_kaldi(data, progress=False)
    assert [(u.id, u.audio, u.duration, u.text, u.speaker, u.start, u.end) for u in result.kept] == [
        ("spk1-a", str(audio / "a.wav"), 1.0, "hello world", "spk1", None, None),
        ("spk1-b", str(audio / "b.wav"), 2.0, "it's me", "spk1", None, None),
    ]
    assert _reasons(result) == {
        "spk2-c": "pipe command in wav.scp",
        "spk2-d": "archive offset in wav.scp",
        "spk2-e": "no audio file",
        "spk2-f": "no audio",
    }
    assert "sph2pipe -f wav" in dict(result.skipped)["spk2-c"]
    assert "shell commands are not run" in dict(result.skipped)["spk2-c"]


def test_import_segments_and_reco2dur(tmp_path):
    talk = _wav(tmp_path / "talk.wav", 6.0)
    data = tmp_path / "data"
    _write(data, "wav.scp", [f"talk1 {talk}"])
    _write(data, "segments", ["talk1-000-150 talk1 0.00 1.50", "talk1-150-400 talk1 1.50 4.00",
                              "talk1-400-end talk1 4.00 -1", "talk1-late talk1 5.50 7.00", "talk1-x talk9 0 1"])
    _write(data, "text", ["talk1-000-150 one", "talk1-150-400 two", "talk1-400-end three", "talk1-late four", "talk1-x five"])
    _write(data, "utt2spk", ["talk1-000-150 al", "talk1-150-400 al", "talk1-400-end al", "talk1-late al", "talk1-x al"])
    _write(data, "reco2dur", ["talk1 6.0"])
    result = prepare_kaldi(data, progress=False)
    assert [(u.id, u.duration, u.text, u.speaker, u.start, u.end) for u in result.kept] == [
        ("talk1-000-150", 1.5, "one", "al", 0.0, 1.5),
        ("talk1-150-400", 2.5, "two", "al", 1.5, 4.0),
        ("talk1-400-end", 2.0, "three", "al", 4.0, 6.0),
    ]
    assert _reasons(result) == {"talk1-late": "segment past the end of the audio", "talk1-x": "no audio"}


def test_export_then_import_round_trip(tmp_path, capsys):
    a, b, talk = _wav(tmp_path / "a.wav", 1.0), _wav(tmp_path / "b b.wav", 1.5), _wav(tmp_path / "talk.wav", 5.0)
    utts = [
        Utterance("s2-b", str(b), 1.5, "second one", "s2"),
        Utterance("s1-a", str(a), 1.0, "first", "s1"),
        Utterance("s1-t1", str(talk), 2.0, "segment one", "s1", start=0.5, end=2.5),
        Utterance("s1-t2", str(talk), 1.25, "segment two", "s1", start=3.0, end=4.25),
    ]
    write_manifest(tmp_path / "m.jsonl", utts)
    out = tmp_path / "kaldi" / "train"
    assert main(["export", "kaldi", str(tmp_path / "m.jsonl"), str(out)]) == 0
    assert "wrote 4 utterances" in capsys.readouterr().out
    files = {p.name: p.read_text(encoding="utf-8").splitlines() for p in out.iterdir()}
    assert files["wav.scp"] == [f"a {a}", f"b_b {b}", f"talk {talk}"]
    assert files["segments"] == ["s1-a a 0.000 1.000", "s1-t1 talk 0.500 2.500", "s1-t2 talk 3.000 4.250",
                                 "s2-b b_b 0.000 1.500"]
    assert files["text"] == ["s1-a first", "s1-t1 segment one", "s1-t2 segment two", "s2-b second one"]
    assert files["utt2spk"] == ["s1-a s1", "s1-t1 s1", "s1-t2 s1", "s2-b s2"]
    assert files["spk2utt"] == ["s1 s1-a s1-t1 s1-t2", "s2 s2-b"]
    assert files["utt2dur"] == ["s1-a 1.000", "s1-t1 2.000", "s1-t2 1.250", "s2-b 1.500"]
    back = prepare_kaldi(out, progress=False)
    assert back.skipped == []
    whole = {u.id: u for u in utts}
    for u in back.kept:
        original = whole[u.id]
        assert (u.audio, u.duration, u.text, u.speaker) == (original.audio, original.duration, original.text, original.speaker)
        assert (u.start or 0.0, u.end) == (original.start or 0.0, original.end or original.duration)

    # Without segments: wav.scp maps utterances to files, and the round trip is exact.
    plain = [u for u in utts if u.start is None]
    export_kaldi(plain, out)
    assert not (out / "segments").exists() and not (out / "reco2dur").exists()
    assert (out / "wav.scp").read_text().splitlines() == [f"s1-a {a}", f"s2-b {b}"]
    assert prepare_kaldi(out, progress=False).kept == sorted(plain, key=lambda u: u.id)
    assert main(["prepare", "kaldi", "--data-dir", str(out), "--out", str(tmp_path / "back.jsonl")]) == 0
    assert read_manifest(tmp_path / "back.jsonl") == sorted(plain, key=lambda u: u.id)


def test_export_refuses_what_kaldi_cannot_hold(tmp_path):
    a = _wav(tmp_path / "a.wav", 0.5)
    with pytest.raises(ValueError, match="whitespace"):
        export_kaldi([Utterance("has space", str(a), 0.5, "x")], tmp_path / "k")
    with pytest.raises(ValueError, match="repeats"):
        export_kaldi([Utterance("u", str(a), 0.5, "x"), Utterance("u", str(a), 0.5, "y")], tmp_path / "k")
    export_kaldi([Utterance("u1", str(a), 0.5, "x")], tmp_path / "k")  # no speaker: its own speaker
    assert (tmp_path / "k" / "utt2spk").read_text() == "u1 u1\n"


def test_missing_files_are_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        prepare_kaldi(tmp_path / "nowhere")
    _write(tmp_path / "d", "wav.scp", [])
    with pytest.raises(FileNotFoundError, match="text"):
        prepare_kaldi(tmp_path / "d")

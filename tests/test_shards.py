"""Sharded, resumable transcription (asr/shards.py): the split by duration, the records of the parts,
the merge; `asr decode` and `asr transcribe` rerun on the same output; and real `torchrun` runs of 2
CPU processes (gloo): the merged output equals a one-process run byte for byte, a rank killed with
SIGKILL mid-run costs only its unfinished inputs, bad files end in the rejects file."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from asr.cli import main
from asr.shards import (KILL_ENV, claim_folder, consecutive_groups, count_records, merge, parts_folder, read_records,
                        rejects_path, shard_by_duration)
from test_cli import checkpoint, tone  # noqa: F401 (checkpoint: the tiny random model, a fixture)

REPO = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------- the split


def test_shard_by_duration_balances_longest_first_and_is_deterministic():
    durations = [1.0, 5.0, 2.0, 2.0, 4.0, 3.0]
    shares = shard_by_duration(durations, 2)
    # 5 -> r0; 4 -> r1; 3 -> r1 (4 < 5); 2 (index 2) -> r0 (5 < 7); 2 (index 3) -> r0 (7 = 7: lower rank); 1 -> r1
    assert shares == [[1, 2, 3], [0, 4, 5]]
    assert shard_by_duration(durations, 2) == shares
    assert shard_by_duration(durations, 1) == [list(range(6))]
    assert shard_by_duration([1.0], 3) == [[0], [], []]
    assert shard_by_duration([], 2) == [[], []]
    many = shard_by_duration([float(i % 7 + 1) for i in range(100)], 4)
    assert sorted(i for share in many for i in share) == list(range(100))
    loads = [sum(i % 7 + 1 for i in share) for share in many]
    assert max(loads) - min(loads) <= 7
    with pytest.raises(ValueError, match="0 ranks"):
        shard_by_duration([1.0], 0)


def test_consecutive_groups_bound_the_audio_held_at_once():
    assert consecutive_groups([4, 7, 9, 2], [2.0, 2.0, 5.0, 1.0], 4.0) == [[4, 7], [9], [2]]
    assert consecutive_groups([], [], 4.0) == []


# --------------------------------------------------------------------------- parts, merge, settings


def _write_part(folder: Path, name: str, lines: list[str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text("".join(lines), encoding="utf-8")


def _record(key: str, output: str = "", error: str = "") -> str:
    return json.dumps({"key": key, "output": output or f"{key}\tx\n", "duration": 1.0, "error": error, "warning": ""}) + "\n"


def test_read_records_prefers_success_and_skips_a_line_cut_by_a_kill(tmp_path):
    folder = tmp_path / "hyp.txt.parts"
    _write_part(folder, "rank0-of-2.a.jsonl", [_record("a", error="a: no such file"), _record("b")])
    _write_part(folder, "rank1-of-2.b.jsonl.partial", [_record("a", "a\tfixed\n"), _record("c"), '{"key": "d", "outp'])
    _write_part(folder, "rank0-of-1.c.jsonl", [_record("a", error="a: later error"), _record("b", error="b: bad")])
    records = read_records(folder)
    assert sorted(records) == ["a", "b", "c"]  # d was cut off
    assert records["a"]["output"] == "a\tfixed\n" and not records["b"]["error"]
    assert count_records(folder) == {"a": 3, "b": 2, "c": 1}

    _write_part(folder, "rank0-of-1.d.jsonl", ["not json\n", _record("e")])
    with pytest.raises(ValueError, match=r"rank0-of-1.d.jsonl, line 1: not a record"):
        read_records(folder)


def test_merge_in_input_order_with_rejects_and_missing_inputs():
    records = {k: json.loads(_record(k, error="x: unreadable" if k == "x" else "")) for k in ("a", "b", "x")}
    output, rejects = merge(["b", "x", "a", "b"], records)
    assert output == "b\tx\nx\tx\na\tx\nb\tx\n"
    assert rejects == [{"path": "x", "reason": "x: unreadable"}]
    with pytest.raises(ValueError, match="no result for 1 inputs \\(c\\)"):
        merge(["a", "c"], records)


def test_parts_and_rejects_paths(tmp_path):
    assert parts_folder(tmp_path / "hyp.txt") == tmp_path / "hyp.txt.parts"
    assert rejects_path(tmp_path / "hyp.txt") == tmp_path / "hyp.rejects.jsonl"
    assert parts_folder(tmp_path / "subs", is_folder=True) == tmp_path / "subs.parts"
    assert rejects_path(tmp_path / "subs.v2", is_folder=True) == tmp_path / "subs.v2.rejects.jsonl"
    assert parts_folder(".", is_folder=True) == Path.cwd().with_name(Path.cwd().name + ".parts")


def test_claim_folder_discards_the_records_of_another_model(tmp_path):
    folder = tmp_path / "hyp.txt.parts"
    assert claim_folder(folder, {"model": "a.pt", "beam": 10}) == ""
    _write_part(folder, "rank0-of-1.a.jsonl", [_record("a")])
    assert claim_folder(folder, {"model": "a.pt", "beam": 10}) == ""
    assert sorted(read_records(folder)) == ["a"]
    note = claim_folder(folder, {"model": "b.pt", "beam": 10})
    assert note == f"{folder}: discarded 1 parts of a run with other settings (model: 'a.pt' then, 'b.pt' now); starting over"
    assert read_records(folder) == {}
    assert claim_folder(folder, {"model": "b.pt", "beam": 10}) == ""


# --------------------------------------------------------------------------- one process, resumed


@pytest.fixture
def inputs(audio, tmp_path) -> tuple[list[Path], list[Path]]:
    """(10 good files of 0.3-1.2 s, [a text file named .wav, a FLAC file cut short (its header reads,
    its audio does not), a missing file])."""
    good = [audio.write(f"in/f{i:02d}.wav", tone(0.3 + 0.1 * i, 16000, 200 + 60 * i), 16000) for i in range(10)]
    (tmp_path / "in" / "text.wav").write_text("not audio\n")
    whole = audio.write("cut.flac", tone(1.0, 16000, 300), 16000).read_bytes()
    (tmp_path / "in" / "cut.flac").write_bytes(whole[: len(whole) // 2])
    return good, [tmp_path / "in" / "text.wav", tmp_path / "in" / "cut.flac", tmp_path / "in" / "missing.wav"]


def _manifest(path: Path, files: list[Path]) -> Path:
    path.write_text("".join(json.dumps({"id": f"u{i:02d}", "audio": str(f), "duration": 0.3 + 0.1 * i, "text": "x"}) + "\n"
                            for i, f in enumerate(files)))
    return path


def test_decode_rerun_skips_what_is_done_and_the_output_is_the_same(capsys, checkpoint, inputs, tmp_path):  # noqa: F811
    good, _ = inputs
    hyp = tmp_path / "out" / "hyp.txt"
    assert main(["decode", str(checkpoint), str(_manifest(tmp_path / "m5.jsonl", good[:5])), "--out", str(hyp),
                 "--device", "cpu"]) == 0
    first = hyp.read_text()
    assert "5 utterances: 0 done earlier, 5 now" in capsys.readouterr().err
    assert main(["decode", str(checkpoint), str(_manifest(tmp_path / "m.jsonl", good)), "--out", str(hyp),
                 "--device", "cpu"]) == 0
    assert "10 utterances: 5 done earlier, 5 now" in capsys.readouterr().err
    assert hyp.read_text().startswith(first) and len(hyp.read_text().splitlines()) == 10
    assert set(count_records(parts_folder(hyp)).values()) == {1}
    assert rejects_path(hyp).read_text() == ""

    fresh = tmp_path / "fresh" / "hyp.txt"
    assert main(["decode", str(checkpoint), str(tmp_path / "m.jsonl"), "--out", str(fresh), "--device", "cpu"]) == 0
    assert fresh.read_bytes() == hyp.read_bytes()
    assert main(["decode", str(checkpoint), str(tmp_path / "m.jsonl"), "--out", str(hyp), "--device", "cpu",
                 "--decoder", "beam"]) == 0
    err = capsys.readouterr().err
    assert "discarded 2 parts of a run with other settings (decode: " in err and "10 utterances: 0 done earlier, 10 now" in err


def test_transcribe_out_file_equals_stdout_and_lists_rejects(capsys, checkpoint, inputs, tmp_path):  # noqa: F811
    good, bad = inputs
    files = [str(f) for f in good[:3] + bad]
    assert main(["transcribe", str(checkpoint), *files, "--device", "cpu", "--json"]) == 1
    printed = capsys.readouterr().out
    out = tmp_path / "out.jsonl"
    (tmp_path / "list.txt").write_text("# the same files\n" + "\n".join(files[1:]) + "\n\n")
    assert main(["transcribe", str(checkpoint), files[0], "--files-from", str(tmp_path / "list.txt"), "--device", "cpu",
                 "--json", "--out", str(out)]) == 1
    assert out.read_text() == printed
    err = capsys.readouterr().err
    assert "6 files: 0 done earlier, 6 now" in err and "3 failed" in err and str(rejects_path(out)) in err
    rejects = [json.loads(line) for line in rejects_path(out).read_text().splitlines()]
    assert [r["path"] for r in rejects] == [str(f) for f in bad]
    assert "not a readable audio file" in rejects[0]["reason"] and "no such file" in rejects[2]["reason"]


def test_transcribe_subtitles_out_dir_resumes_and_prints_the_same(capsys, checkpoint, inputs, tmp_path):  # noqa: F811
    good, _ = inputs
    out_dir = tmp_path / "subs"
    argv = ["transcribe", str(checkpoint), "--device", "cpu", "--format", "srt", "--out-dir", str(out_dir)]
    assert main(argv + [str(f) for f in good[:4]]) == 0
    capsys.readouterr()
    first = {p: p.read_bytes() for p in out_dir.glob("*.srt")}
    assert main(argv + [str(f) for f in good]) == 0
    printed, err = capsys.readouterr()
    assert printed.splitlines() == [str(out_dir / f.with_suffix(".srt").name) for f in good]
    assert "10 files: 4 done earlier, 6 now" in err
    assert all(p.read_bytes() == content for p, content in first.items())
    assert sorted(p.name for p in out_dir.iterdir()) == sorted(f.with_suffix(".srt").name for f in good)
    assert set(count_records(parts_folder(out_dir, is_folder=True)).values()) == {1}
    assert rejects_path(out_dir, is_folder=True).read_text() == ""


# --------------------------------------------------------------------------- torchrun, 2 processes


def _torchrun(*argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "asr.cli",
               *argv]
    return subprocess.run(command, env={**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", **(env or {})},
                          cwd=REPO, capture_output=True, text=True, timeout=240)


@pytest.mark.slow
def test_two_ranks_merge_like_one_process_and_resume_after_a_sigkill(capsys, checkpoint, inputs, tmp_path):  # noqa: F811
    good, bad = inputs
    files = [str(f) for f in good + bad]
    options = ["--device", "cpu", "--json", "--batch-seconds", "1"]  # a batch or two per file: many flushes
    alone = tmp_path / "alone.jsonl"
    assert main(["transcribe", str(checkpoint), *files, *options, "--out", str(alone)]) == 1
    capsys.readouterr()

    # Two ranks, rank 1 killed (SIGKILL) once it has flushed 2 records: torchrun fails, nothing merged.
    out = tmp_path / "two" / "out.jsonl"
    killed = _torchrun("transcribe", str(checkpoint), *files, *options, "--out", str(out), env={KILL_ENV: "1:2"})
    assert killed.returncode != 0 and not out.exists(), killed.stderr[-3000:]
    unfinished = list(parts_folder(out).glob("rank1-of-2.*.jsonl.partial"))
    assert len(unfinished) == 1 and len(unfinished[0].read_text().splitlines()) == 2
    before = count_records(parts_folder(out))

    rerun = _torchrun("transcribe", str(checkpoint), *files, *options, "--out", str(out))
    assert rerun.returncode != 0, rerun.stderr[-3000:]  # 3 files failed: the exit status says so
    assert out.read_bytes() == alone.read_bytes()
    succeeded = [f for f in files if f not in map(str, bad)]
    decoded = count_records(parts_folder(out))
    assert {f: decoded[f] for f in succeeded} == {f: 1 for f in succeeded}  # none decoded twice, none lost
    assert f"13 files: {sum(before.get(f, 0) for f in succeeded)} done earlier" in rerun.stderr
    assert "3 failed" in rerun.stderr
    rejects = [json.loads(line) for line in rejects_path(out).read_text().splitlines()]
    assert [r["path"] for r in rejects] == [str(f) for f in bad]
    assert all(r["path"] in r["reason"] for r in rejects)
    assert rejects_path(out).read_bytes() == rejects_path(alone).read_bytes()


@pytest.mark.slow
def test_two_ranks_decode_a_manifest_like_one_process(capsys, checkpoint, inputs, tmp_path):  # noqa: F811
    good, bad = inputs
    manifest = _manifest(tmp_path / "m.jsonl", good + bad[:1])
    alone = tmp_path / "alone.txt"
    assert main(["decode", str(checkpoint), str(manifest), "--out", str(alone), "--device", "cpu"]) == 1
    capsys.readouterr()
    out = tmp_path / "two" / "hyp.txt"
    run = _torchrun("decode", str(checkpoint), str(manifest), "--out", str(out), "--device", "cpu")
    assert run.returncode != 0 and "11 utterances: 0 done earlier, 11 now" in run.stderr, run.stderr[-3000:]
    assert out.read_bytes() == alone.read_bytes()
    assert [p.name.split(".")[0] for p in sorted(parts_folder(out).glob("rank*.jsonl"))] == ["rank0-of-2", "rank1-of-2"]
    rejects = [json.loads(line) for line in rejects_path(out).read_text().splitlines()]
    assert [(r["id"], r["path"]) for r in rejects] == [("u10", str(bad[0]))] and "not a readable" in rejects[0]["reason"]


@pytest.mark.slow
def test_two_ranks_without_an_output_file_print_like_one_process(capsys, checkpoint, inputs):  # noqa: F811
    good, bad = inputs
    files = [str(f) for f in good + bad[:1]]
    assert main(["transcribe", str(checkpoint), *files, "--device", "cpu"]) == 1
    alone = capsys.readouterr().out
    run = _torchrun("transcribe", str(checkpoint), *files, "--device", "cpu")
    assert run.returncode != 0 and "11 files: 0 done earlier, 11 now" in run.stderr, run.stderr[-3000:]
    assert run.stdout == alone

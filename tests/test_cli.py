"""The `asr` command line: transcribe, decode, score, argument errors, --help, and the console script."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

torch.set_num_threads(1)

from asr.checkpoint import save_checkpoint  # noqa: E402
from asr.cli import build_parser, main  # noqa: E402
from asr.config import load_config  # noqa: E402
from asr.model import CTCModel  # noqa: E402
from asr.text import CharTokenizer  # noqa: E402

SUBCOMMANDS = [
    ["prepare"], ["prepare", "librispeech"], ["prepare", "fsdd"], ["download"], ["train"], ["decode"],
    ["transcribe"], ["score"], ["plot"], ["lm"], ["lm", "build"], ["lm", "binary"], ["lm", "lexicon"], ["lm", "perplexity"],
    ["upgrade-checkpoint"], ["serve"], ["export", "onnx"], ["split"], ["prepare", "speechocean762"],
]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    config = load_config(None, ["model.subsampling=stack", "model.subsampling_factor=4", "model.hidden_size=32",
                                "model.num_layers=1"])
    tokenizer = CharTokenizer()
    torch.manual_seed(0)
    model = CTCModel(config.features, config.model, len(tokenizer))
    with torch.no_grad():
        n = config.features.n_mels
        model.normalizer.set_stats(torch.full((n,), -6.0), torch.full((n,), 2.5))
        model.output.weight.mul_(8)
    path = tmp_path_factory.mktemp("ckpt") / "model.pt"
    save_checkpoint(path, {"config": config.to_dict(), "tokenizer": tokenizer.to_dict(), "model": model.state_dict()})
    return path


def tone(seconds: float, sr: int, freq: float) -> np.ndarray:
    t = np.arange(int(round(seconds * sr))) / sr
    return (0.3 * np.sin(2 * np.pi * freq * (t + 2 * t * t))).astype(np.float32)


@pytest.fixture
def files(audio, tmp_path) -> tuple[list[Path], Path]:
    """Two good files and one that is text named .wav."""
    good = [audio.write("a.wav", tone(0.4, 16000, 300), 16000), audio.write("b.flac", tone(0.3, 8000, 700), 8000)]
    bad = tmp_path / "bad.wav"
    bad.write_text("not audio")
    return good, bad


def run(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


# --------------------------------------------------------------------------- transcribe


def test_transcribe_good_files(capsys, checkpoint, files):
    good, _ = files
    code, out, err = run(capsys, "transcribe", checkpoint, *good, "--device", "cpu", "--threads", "1")
    assert code == 0
    lines = out.splitlines()
    assert len(lines) == 2
    for line, path in zip(lines, good):
        assert line.startswith(f"{path}\t")
        assert line.count("\t") == 1
    assert "error" not in err


def test_transcribe_reports_bad_file_and_fails(capsys, checkpoint, files):
    good, bad = files
    code, out, err = run(capsys, "transcribe", checkpoint, good[0], bad, good[1], "--device", "cpu")
    assert code == 1
    lines = out.splitlines()
    assert [line.split("\t")[0] for line in lines] == [str(good[0]), str(good[1])]
    assert str(bad) not in out
    assert f"asr transcribe: error: {bad}" in err
    assert "1 of 3 files could not be transcribed" in err


def test_transcribe_missing_file(capsys, checkpoint, files, tmp_path):
    good, _ = files
    missing = tmp_path / "missing.wav"
    code, out, err = run(capsys, "transcribe", checkpoint, missing, good[0], "--device", "cpu")
    assert code == 1
    assert str(missing) in err
    assert out.splitlines()[0].split("\t")[0] == str(good[0])


@pytest.mark.parametrize("detailed", [[], ["--decoder", "beam", "--timestamps"]])
def test_transcribe_too_short_audio_is_empty_with_a_warning(capsys, checkpoint, audio, detailed):
    """A 0.1 s file and a one-sample file give an empty transcript and a warning naming them; the run
    still succeeds (exit 0) and transcribes the other files."""
    one = audio.write("one_sample.wav", np.array([0.3], dtype=np.float32), 16000)
    tenth = audio.write("tenth.wav", tone(0.1, 16000, 300), 16000)
    good = audio.write("good.wav", tone(0.5, 16000, 300), 16000)
    code, out, err = run(capsys, "transcribe", "--model", checkpoint, one, tenth, good, "--device", "cpu",
                         "--format", "json", *detailed)
    assert code == 0, err
    rows = [json.loads(line) for line in out.splitlines()]
    assert [r["path"] for r in rows] == [str(one), str(tenth), str(good)]
    assert rows[0]["text"] == rows[1]["text"] == "" and "warning" not in rows[2]
    if detailed:
        assert rows[0]["words"] == rows[1]["words"] == []
    assert rows[2]["text"]  # this model emits letters from any audio: without the check, "j" and "pl" above
    assert f"asr transcribe: warning: {one}: 1 sample (0.000 s) of audio, too short to transcribe (this model needs " \
           "at least 0.120 s); transcript left empty" in err
    assert f"asr transcribe: warning: {tenth}: 1600 samples (0.100 s) of audio, too short" in err
    assert rows[1]["warning"] in err and "error" not in err and str(good) not in err

    code, out, err = run(capsys, "transcribe", "--model", checkpoint, tenth, "--device", "cpu")  # plain text output
    assert (code, out) == (0, f"{tenth}\t\n") and f"warning: {tenth}:" in err


def test_transcribe_json(capsys, checkpoint, files):
    good, bad = files
    code, out, err = run(capsys, "transcribe", checkpoint, good[0], bad, good[1], "--json", "--device", "cpu")
    assert code == 1
    records = [json.loads(line) for line in out.splitlines()]
    assert [r["path"] for r in records] == [str(good[0]), str(bad), str(good[1])]
    assert set(records[0]) == {"path", "text", "duration"}
    assert isinstance(records[0]["text"], str)
    assert records[0]["duration"] == pytest.approx(0.4)
    assert records[2]["duration"] == pytest.approx(0.3)
    assert set(records[1]) == {"path", "error"}
    assert str(bad) in records[1]["error"]
    assert str(bad) in err


def test_transcribe_json_texts_match_plain(capsys, checkpoint, files):
    good, _ = files
    _, plain, _ = run(capsys, "transcribe", checkpoint, *good, "--device", "cpu")
    _, js, _ = run(capsys, "transcribe", checkpoint, *good, "--json", "--device", "cpu")
    assert [line.split("\t", 1)[1] for line in plain.splitlines()] == [json.loads(x)["text"] for x in js.splitlines()]


def test_transcribe_folder(capsys, checkpoint, files, tmp_path):
    code, out, err = run(capsys, "transcribe", checkpoint, tmp_path, "--device", "cpu", "--batch-seconds", "0.5")
    assert code == 1  # bad.wav is in the folder
    assert [line.split("\t")[0] for line in out.splitlines()] == [str(tmp_path / "a.wav"), str(tmp_path / "b.flac")]
    assert str(tmp_path / "bad.wav") in err


def test_transcribe_missing_checkpoint(capsys, files, tmp_path):
    good, _ = files
    code, out, err = run(capsys, "transcribe", tmp_path / "none.pt", good[0], "--device", "cpu")
    assert code == 2
    assert "none.pt" in err
    assert out == ""


@pytest.mark.parametrize("options, suffix", [([], ".txt"), (["--timestamps"], ".txt"), (["--format", "json"], ".json")])
def test_transcribe_out_dir_writes_every_format(capsys, checkpoint, files, tmp_path, options, suffix):
    """Issue 29 row 5: --out-dir no longer ignores txt (and json): one file per input, holding what
    would be printed for it."""
    good, _ = files
    base = ["transcribe", checkpoint, *good, "--device", "cpu", *options]
    code, printed, _ = run(capsys, *base)
    assert code == 0
    code, out, err = run(capsys, *base, "--out-dir", tmp_path / "out")
    written = [tmp_path / "out" / (p.stem + suffix) for p in good]
    assert code == 0 and out.split() == [str(p) for p in written]
    assert "".join(p.read_text() for p in written) == printed


def test_transcribe_out_dir_refuses_existing_files_before_any_work(capsys, checkpoint, audio, tmp_path):
    """Issue 29 row 5: a hand-written subtitle file is never replaced silently; the refusal comes
    before the model is even loaded (here a missing one) and names a few clashing files and the count."""
    inputs = [audio.write(f"in/x{i}.wav", tone(0.4, 16000, 300 + 50 * i), 16000) for i in range(5)]
    out = tmp_path / "subs"
    out.mkdir()
    for i in range(5):
        (out / f"x{i}.srt").write_text(f"hand-written {i}")
    code, stdout, err = run(capsys, "transcribe", tmp_path / "missing.pt", *inputs, "--format", "srt",
                            "--out-dir", out, "--device", "cpu")
    assert code == 2 and stdout == ""
    assert f"--out-dir {out}: 5 output file(s) already exist ({out / 'x0.srt'}, {out / 'x1.srt'}, " \
           f"{out / 'x2.srt'} and 2 more); nothing was transcribed. Add --overwrite" in err
    assert [(out / f"x{i}.srt").read_text() for i in range(5)] == [f"hand-written {i}" for i in range(5)]
    code, stdout, err = run(capsys, "transcribe", checkpoint, *inputs, "--format", "srt", "--out-dir", out,
                            "--device", "cpu", "--overwrite")
    assert code == 0 and len(stdout.split()) == 5
    assert not any((out / f"x{i}.srt").read_text().startswith("hand-written") for i in range(5))


# --------------------------------------------------------------------------- decode


def test_decode_manifest(capsys, checkpoint, files, tmp_path):
    good, _ = files
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(
        "".join(json.dumps({"id": f"u{i}", "audio": str(p), "duration": 0.3, "text": "x"}) + "\n" for i, p in enumerate(good))
    )
    out_path = tmp_path / "out" / "hyp.txt"
    code, out, err = run(capsys, "decode", checkpoint, manifest, "--out", out_path, "--device", "cpu")
    assert code == 0
    assert str(out_path) in err
    hyps = out_path.read_text().splitlines()
    assert [h.split("\t")[0] for h in hyps] == ["u0", "u1"]
    _, plain, _ = run(capsys, "transcribe", checkpoint, *good, "--device", "cpu")
    assert [h.split("\t", 1)[1] for h in hyps] == [line.split("\t", 1)[1] for line in plain.splitlines()]


# --------------------------------------------------------------------------- score


def write_ref_hyp(tmp_path: Path) -> tuple[Path, Path]:
    ref = tmp_path / "ref.jsonl"
    ref.write_text(
        "".join(json.dumps({"id": k, "audio": f"{k}.wav", "duration": 1.0, "text": v}) + "\n"
                for k, v in {"u1": "The cat sat on the mat.", "u2": "Hello world", "u3": "a b c"}.items())
    )
    hyp = tmp_path / "hyp.txt"
    hyp.write_text("u1\tthe cat sit on mat\nu2\thello world\nu3\ta x b c d\n")
    return ref, hyp


def test_score_prints_summary_and_writes_alignments(capsys, tmp_path):
    ref, hyp = write_ref_hyp(tmp_path)
    summary_path = tmp_path / "res" / "wer.txt"
    code, out, err = run(capsys, "score", ref, hyp, "--out", summary_path)
    assert code == 0
    assert "%WER 36.36 [ 4 / 11, 2 ins, 1 del, 1 sub ]" in out
    assert f"ref: {ref}" in out and f"hyp: {hyp}" in out
    align = tmp_path / "hyp.txt.align"
    assert align.is_file()
    assert f"alignments: {align}" in out
    text = align.read_text()
    assert "id: u1" in text and "REF:  the cat SAT on THE mat" in text and "HYP:  the cat SIT on *** mat" in text
    written = summary_path.read_text()
    assert "%WER 36.36 [ 4 / 11, 2 ins, 1 del, 1 sub ]" in written
    assert written.strip() in out  # the same summary that was printed


def test_score_compare_prints_both_summaries_and_the_bootstrap_difference(capsys, tmp_path):
    ref, hyp = write_ref_hyp(tmp_path)
    better = tmp_path / "better.txt"
    better.write_text("u1\tthe cat sat on the mat\nu2\thello world\nu3\ta x b c d\n", encoding="utf-8")
    summary_path = tmp_path / "cmp.txt"
    code, out, err = run(capsys, "score", ref, hyp, "--compare", better, "--resamples", "50", "--out", summary_path)
    assert code == 0
    assert "%WER 36.36 [ 4 / 11" in out and "%WER 18.18 [ 2 / 11" in out
    assert f"A: {hyp}" in out and f"B: {better}" in out
    assert "WER A 36.36  B 18.18  B - A -18.18 points, 95% interval [" in out
    assert "of 50 paired bootstrap resamples of the 3 utterances" in out
    assert "B - A" in summary_path.read_text()


def test_score_errors_lists_the_recurring_word_errors(capsys, tmp_path):
    ref, hyp = write_ref_hyp(tmp_path)  # u1: sat -> sit, "the" deleted; u3: x and ... inserted
    summary_path = tmp_path / "err.txt"
    code, out, err = run(capsys, "score", ref, hyp, "--errors", "3", "--out", summary_path)
    assert code == 0
    assert "SUBSTITUTIONS (1 in all; ref ==> hyp)\n     1  sat ==> sit\nDELETIONS (1 in all)\n     1  the\n" in out
    assert "INSERTIONS (2 in all)" in out
    assert "REFERENCE WORDS MOST OFTEN WRONG" in out and "     1 / 1      sat" in out
    assert "SUBSTITUTIONS" in summary_path.read_text()
    code, out, err = run(capsys, "score", ref, hyp)
    assert "SUBSTITUTIONS" not in out  # only when asked


def test_score_custom_alignments_path(capsys, tmp_path):
    ref, hyp = write_ref_hyp(tmp_path)
    custom = tmp_path / "my.align"
    code, out, _ = run(capsys, "score", ref, hyp, "--alignments", custom)
    assert code == 0
    assert custom.is_file()
    assert not (tmp_path / "hyp.txt.align").exists()


def test_score_missing_hyp(capsys, tmp_path):
    ref, _ = write_ref_hyp(tmp_path)
    code, out, err = run(capsys, "score", ref, tmp_path / "nohyp.txt")
    assert code == 2
    assert "nohyp.txt" in err


def test_score_duplicate_id(capsys, tmp_path):
    ref, hyp = write_ref_hyp(tmp_path)
    hyp.write_text("u1\ta\nu1\tb\n")
    code, _, err = run(capsys, "score", ref, hyp)
    assert code == 2
    assert f"{hyp}:2" in err


# --------------------------------------------------------------------------- argument errors


def test_train_unknown_override_key(capsys, tmp_path):
    exp = tmp_path / "exp"
    code, out, err = run(capsys, "train", "--train", tmp_path / "t.jsonl", "--dev", tmp_path / "d.jsonl",
                         "--out", exp, "model.no_such_key=3")
    assert code == 2
    assert "model.no_such_key" in err
    assert err.startswith("asr train: error:")
    assert not exp.exists()


def test_train_malformed_override(capsys, tmp_path):
    code, _, err = run(capsys, "train", "--train", "t.jsonl", "--dev", "d.jsonl", "--out", tmp_path / "e", "lr=1")
    assert code == 2
    assert "lr=1" in err


def test_train_bad_value_type(capsys, tmp_path):
    code, _, err = run(capsys, "train", "--train", "t.jsonl", "--dev", "d.jsonl", "--out", tmp_path / "e",
                       "train.epochs=many")
    assert code == 2
    assert "train.epochs" in err


def test_prepare_librispeech_missing_corpus_dir(capsys, tmp_path):
    missing = tmp_path / "LibriSpeech" / "dev-clean"
    out_path = tmp_path / "m.jsonl"
    code, out, err = run(capsys, "prepare", "librispeech", "--corpus-dir", missing, "--out", out_path)
    assert code == 2
    assert str(missing) in err
    assert "not found" in err
    assert not out_path.exists()


def test_prepare_librispeech_empty_corpus_dir(capsys, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    code, _, err = run(capsys, "prepare", "librispeech", "--corpus-dir", empty, "--out", tmp_path / "m.jsonl")
    assert code == 2
    assert "no usable utterances" in err


def test_no_command_prints_help(capsys):
    code = main([])
    out, _ = capsys.readouterr()
    assert code == 2
    assert "usage: asr" in out


def test_unknown_command_exits_2(capsys):
    with pytest.raises(SystemExit) as e:
        main(["frobnicate"])
    assert e.value.code == 2


def test_missing_required_argument_exits_2(capsys):
    with pytest.raises(SystemExit) as e:
        main(["score", "only_ref.txt"])
    assert e.value.code == 2
    assert "hyp" in capsys.readouterr().err


# --------------------------------------------------------------------------- help


def test_help(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for name in ["prepare", "download", "train", "decode", "transcribe", "score", "plot"]:
        assert name in out


@pytest.mark.parametrize("argv", SUBCOMMANDS, ids=lambda a: " ".join(a))
def test_subcommand_help(capsys, argv):
    with pytest.raises(SystemExit) as e:
        main(argv + ["--help"])
    assert e.value.code == 0
    assert f"usage: asr {' '.join(argv)}" in capsys.readouterr().out


def test_parser_knows_every_subcommand():
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    assert set(sub.choices) == {"prepare", "download", "train", "decode", "transcribe", "score", "plot", "lm", "export", "average",
                                "upgrade-checkpoint", "serve", "split"}


def test_a_command_builds_only_its_own_parser():
    """`asr transcribe` does not import the corpus registry (asr prepare's options) to parse its
    arguments (issue 27); with no command, or an unknown one, every command is known."""
    code = ("import sys; from asr.cli import build_parser; "
            "p = build_parser('transcribe'); p.parse_args(['transcribe', 'a.wav']); print('asr.corpora' in sys.modules); "
            "build_parser('prepare'); print('asr.corpora' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.split() == ["False", "True"]
    for command in (None, "nope"):
        sub = next(a for a in build_parser(command)._actions if a.dest == "command")
        assert {"prepare", "transcribe", "train"} <= set(sub.choices)


@pytest.mark.parametrize("decoder", ["greedy", "beam-lm"])
def test_the_asr_command_prints_everything_and_exits_with_its_code(checkpoint, files, tiny_word_lm, decoder):
    """`python -m asr.cli` (the console script's entry(), which ends the process without tearing the
    interpreter down) prints every transcript, also through a pipe, exits 0 or 1 for a bad file,
    and leaves no process behind (beam-lm's search process is stopped first)."""
    if decoder == "beam-lm":
        pytest.importorskip("flashlight.lib.text")
    good, bad = files
    lm, lexicon = tiny_word_lm
    argv = [sys.executable, "-m", "asr.cli", "transcribe", "--model", str(checkpoint), "--decoder", decoder,
            "--lm", lm, "--lexicon", lexicon, "--device", "cpu"]
    done = subprocess.run(argv + [str(p) for p in good], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert [line.split("\t")[0] for line in done.stdout.splitlines()] == [str(p) for p in good]
    failed = subprocess.run(argv + [str(good[0]), str(bad)], capture_output=True, text=True, timeout=300)
    assert failed.returncode == 1 and failed.stdout.startswith(str(good[0])) and "bad.wav" in failed.stderr
    # Whether the children were stopped: a process left behind would hold the pipe open, and reading
    # it to its end would time out.
    process = subprocess.Popen(argv + [str(good[0])], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        out, _ = process.communicate(timeout=120)
    finally:
        process.kill()
    assert process.returncode == 0 and out.decode().startswith(str(good[0]))


def test_console_script_help():
    bin_dir = Path(sys.executable).parent
    script = shutil.which("asr", path=str(bin_dir))
    if script is None:
        pytest.skip(f"console script asr not installed in {bin_dir}")
    result = subprocess.run([script, "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "usage: asr" in result.stdout
    assert "transcribe" in result.stdout


def test_transcribe_and_the_api_resolve_settings_in_one_order(checkpoint, tmp_path):
    """Chunk length and batch size come, for `asr transcribe` as for `asr.load`, from the checkpoint,
    then decode.yaml next to it, then what is given explicitly (they once disagreed: the CLI took the
    class default chunk length and ignored decode.yaml's batch_seconds)."""
    import asr
    from asr.cli import _recognizer

    model = tmp_path / "model.pt"
    shutil.copy(checkpoint, model)
    (tmp_path / "decode.yaml").write_text("chunk_seconds: 12\nchunk_overlap: 2\nbatch_seconds: 45\n")

    def settings(pipeline):
        return pipeline.batch_seconds, pipeline.chunk_seconds, pipeline.chunk_overlap

    args = build_parser().parse_args(["transcribe", "-m", str(model), "x.wav", "--device", "cpu"])
    assert settings(_recognizer(args).pipeline) == settings(asr.load(model).pipeline) == (45.0, 12.0, 2.0)
    args = build_parser().parse_args(["transcribe", "-m", str(model), "x.wav", "--device", "cpu", "--chunk-seconds",
                                      "20", "--batch-seconds", "60"])
    assert settings(_recognizer(args).pipeline) == settings(asr.load(model, chunk_seconds=20, batch_seconds=60).pipeline) \
        == (60.0, 20.0, 2.0)

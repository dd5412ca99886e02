"""scripts/bench_train.py (training throughput against the hardware ceiling),
scripts/experiments.py (a series of training runs, each scored on dev), scripts/cache_features.py
(the frozen encoder's features, speed-perturbed copies too), scripts/synthesize_speech.py (flite
speech from LM text) and scripts/noise_segments.py (room noise of a corpus as a noise manifest), on
generated speech; scripts/serve_upload_memory.py on a small FLAC; scripts/errors_by_word_count.py
(word errors by the reference words' counts in a text) on a toy text."""

from __future__ import annotations

import contextlib
import gzip
import importlib.util
import io
import json
import re
import shutil
import sys
from pathlib import Path

import pytest
import soundfile
import torch
import yaml

from asr import cli
from encoder_support import needs_encoder
from synth import TRANSCRIPTS, write_synth_corpus

torch.set_num_threads(1)

SCRIPTS = Path(__file__).resolve().parent.parent / "scripts"

TINY_MODEL = [
    "features.n_mels=24", "model.subsampling=stack", "model.subsampling_factor=2", "model.hidden_size=32",
    "model.num_layers=2", "specaug.freq_masks=1", "specaug.freq_width=4", "specaug.time_masks=1",
    "train.max_batch_seconds=4", "train.warmup_steps=2", "train.num_workers=0",
]


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(f"script_{name}", SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def manifest(tmp_path_factory) -> Path:
    return write_synth_corpus(tmp_path_factory.mktemp("synth"), TRANSCRIPTS * 2)


def printed_figures(text: str) -> dict[str, str]:
    """The report's `name: value` lines."""
    return dict(line.split(": ", 1) for line in text.splitlines() if ": " in line and not line.startswith("|"))


def test_bench_train_reports_loop_and_ceiling(manifest, tmp_path, capsys):
    bench = load_script("bench_train")
    out_json = tmp_path / "bench.json"
    code = bench.main(["--train", str(manifest), "--steps", "4", "--device", "cpu", "--json", str(out_json),
                       *TINY_MODEL, "train.log_every=25"])
    assert code == 0
    figures = printed_figures(capsys.readouterr().out)
    result = json.loads(out_json.read_text())

    assert figures["device"].startswith("cpu") and figures["torch"] == torch.__version__
    assert figures["config"].startswith("defaults features.n_mels=24 model.subsampling=stack")
    assert figures["precision"] == "float32"
    # 16 utterances of 1.3-1.7 s in batches of at most 4 s: 2 per batch, 8 batches an epoch.
    assert int(figures["batches per epoch"]) == result["batches_per_epoch"] == 8
    # log_every 25 is more than 4 steps allow: lowered to 1, so update 1 is warm-up and 2-4 are timed.
    assert figures["batches"] == "1 warm-up + 3 timed (of 4 updates)"
    ceiling = float(figures["ceiling audio-hours per device-hour"])
    loop = float(figures["loop audio-hours per device-hour"])
    assert ceiling > 0 and loop > 0
    assert float(figures["ratio loop / ceiling"]) == pytest.approx(loop / ceiling, rel=0.01)
    assert 0 <= float(figures["padding fraction (timed batches)"]) < 1
    assert 0 <= float(figures["loop padding fraction"]) < 1
    assert 0 <= float(figures["loop data-wait share"]) <= 1
    assert float(figures["ceiling peak memory MB"].split()[0]) > 0
    assert float(figures["loop peak memory MB"]) > 0
    assert int(figures["loop clipped updates"]) >= 0
    assert result["timed_batches"] == 3 and result["steps"] == 4
    assert result["ceiling_audio_hours_per_hour"] == pytest.approx(ceiling, abs=0.01)
    assert result["loop_audio_hours_per_hour"] == pytest.approx(loop, abs=0.01)


def test_bench_train_loop_throughput_counts_only_windows_after_the_first():
    bench = load_script("bench_train")
    durations = [10.0, 20.0, 30.0, 40.0]
    batches = [[0], [1], [2], [3]]
    records = [
        {"type": "train", "step": 2, "audio_hours_per_hour": 1.0, "elapsed": 30.0},  # warm-up: left out
        {"type": "valid", "step": 2, "elapsed": 31.0},
        {"type": "train", "step": 3, "audio_hours_per_hour": 30.0, "elapsed": 31.0, "data_wait_share": 0.5},
        {"type": "train", "step": 4, "audio_hours_per_hour": 40.0, "elapsed": 32.0, "data_wait_share": 0.0},
    ]
    figures = bench.loop_throughput(records, batches, durations)
    # Update 3 trained 30 s of audio in 1 s, update 4 40 s in 1 s: 70 s in 2 s.
    assert figures["audio_hours_per_hour"] == pytest.approx(35.0)
    assert figures["warmup_steps"] == 2 and figures["timed_steps"] == 2
    assert figures["data_wait_share"] == pytest.approx(0.25)
    assert figures["padding_fraction"] is None  # not in these records
    with pytest.raises(ValueError, match="need 2 or more"):
        bench.loop_throughput(records[:2], batches, durations)


def run_in_process(command: list[str], log_path: Path) -> tuple[int, str]:
    """experiments.run_logged without a new interpreter: `python -m asr.cli ARGS` as cli.main(ARGS)."""
    assert command[:3] == [sys.executable, "-m", "asr.cli"]
    output = io.StringIO()
    with contextlib.redirect_stdout(output), contextlib.redirect_stderr(output):
        code = cli.main(command[3:])
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log_path.write_text(output.getvalue())
    return code, output.getvalue()


def write_spec(folder: Path, manifest: Path, runs: list[dict], name: str = "series.yaml") -> Path:
    config = folder / "tiny.yaml"
    config.write_text(yaml.safe_dump({"train": {"epochs": 2, "log_every": 1, "preload_audio": False}}))
    spec = folder / name
    spec.write_text(yaml.safe_dump({
        "base_config": "tiny.yaml", "train": str(manifest), "dev": str(manifest), "out": "out",
        "common": TINY_MODEL + ["train.max_steps=2", "train.device=cpu"], "device": "cpu", "runs": runs,
    }))
    return spec


def table_rows(markdown: str) -> list[list[str]]:
    rows = [line.strip("|").split("|") for line in markdown.splitlines() if line.startswith("| ")]
    return [[cell.strip() for cell in row] for row in rows[1:]]  # without the header


def test_experiments_runs_scores_tabulates_and_skips_finished_runs(manifest, tmp_path, monkeypatch, capsys):
    experiments = load_script("experiments")
    spec = write_spec(tmp_path, manifest, [
        {"name": "base", "change": "nothing", "overrides": []},
        {"name": "gru", "change": "GRU cells", "overrides": ["model.rnn_type=gru"]},
    ])
    monkeypatch.setattr(experiments, "run_logged", run_in_process)
    assert experiments.main([str(spec)]) == 0

    out = tmp_path / "out"
    rows = table_rows((out / "results.md").read_text())
    assert [r[0] for r in rows] == ["base", "gru"]
    header = [c.strip() for c in (out / "results.md").read_text().split("\n| run |")[1].split("\n")[0].split("|")]
    column = {name: i + 1 for i, name in enumerate(header) if name}
    for row in rows:
        assert row[column["status"]] == "done"
        assert row[column["updates"]] == "2"
        for name in ("greedy WER", "greedy CER", "epochs", "params (M)", "device min"):
            assert re.fullmatch(r"\d+\.\d+", row[column[name]]), (name, row)
        assert row[column["beam-lm WER"]] == "—"  # no LM in the spec
    assert rows[1][column["overrides"]] == "`model.rnn_type=gru`"
    assert re.fullmatch(r"[+-]\d+\.\d\d", rows[1][column["Δ greedy WER"]])

    results = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert [r["name"] for r in results] == ["base", "gru"]
    for r in results:
        assert r["epochs"] == pytest.approx(0.25)  # 2 of 8 batches
        assert r["greedy_wer"] >= 0 and r["greedy_cer"] >= 0 and r["device_minutes"] >= 0
        assert (out / r["name"] / "decode_dev_greedy" / "wer.txt").is_file()
    assert results[1]["params_m"] < results[0]["params_m"]  # a GRU has 3 gates to the LSTM's 4

    # A series killed after gru's training, before its scores: the re-run decodes and scores gru
    # again without training it.
    lines = (out / "results.jsonl").read_text().splitlines()
    (out / "results.jsonl").write_text(lines[0] + "\n")
    commands = []

    def record(command, log_path):
        commands.append(command[3])
        return run_in_process(command, log_path)

    monkeypatch.setattr(experiments, "run_logged", record)
    assert experiments.main([str(spec)]) == 0
    assert commands == ["decode", "score"]
    assert [r[0] for r in table_rows((out / "results.md").read_text())] == ["base", "gru"]

    # A re-run starts nothing: both runs are finished.
    def must_not_run(command, log_path):
        raise AssertionError(f"finished run started again: {command}")

    monkeypatch.setattr(experiments, "run_logged", must_not_run)
    capsys.readouterr()
    assert experiments.main([str(spec)]) == 0
    printed = capsys.readouterr().out
    assert "[base] skipped" in printed and "[gru] skipped" in printed
    assert len((out / "results.jsonl").read_text().splitlines()) == 2


def test_experiments_a_crashing_run_does_not_stop_the_series(manifest, tmp_path, monkeypatch):
    experiments = load_script("experiments")
    # Valid options, but conv subsampling has no factor 3: `asr train` fails when it builds the model.
    spec = write_spec(tmp_path, manifest, [
        {"name": "broken", "change": "impossible model", "overrides": ["model.subsampling=conv", "model.subsampling_factor=3"]},
        {"name": "base", "change": "nothing", "overrides": []},
    ])
    real_run_logged = experiments.run_logged

    def crash_in_a_real_subprocess(command, log_path):
        # The crashing run goes through a real interpreter; the healthy one in-process, to stay fast.
        return (real_run_logged if "broken" in str(log_path) else run_in_process)(command, log_path)

    monkeypatch.setattr(experiments, "run_logged", crash_in_a_real_subprocess)
    assert experiments.main([str(spec)]) == 1  # a run failed
    results = {r["name"]: r for r in map(json.loads, (tmp_path / "out" / "results.jsonl").read_text().splitlines())}
    assert results["broken"]["status"] == "train failed (exit 2)"
    assert "subsampling" in (tmp_path / "out" / "broken" / "train.out").read_text()
    assert results["base"]["status"] == "done"
    rows = {r[0]: r for r in table_rows((tmp_path / "out" / "results.md").read_text())}
    assert rows["broken"][-1] == "train failed (exit 2)" and rows["base"][-1] == "done"


def test_experiments_dry_run_checks_the_spec_and_prints_commands(manifest, tmp_path, capsys):
    experiments = load_script("experiments")
    spec = write_spec(tmp_path, manifest, [
        {"name": "base", "change": "nothing", "overrides": []},
        {"name": "deeper", "change": "3 layers", "overrides": ["model.num_layers=3"]},
    ])
    assert experiments.main([str(spec), "--dry-run", "--only", "deeper"]) == 0
    printed = capsys.readouterr().out
    assert "asr.cli train --config" in printed and "--resume" in printed and "model.num_layers=3" in printed
    assert "asr.cli decode" in printed and "--decoder greedy" in printed and "asr.cli score" in printed
    assert "beam-lm" not in printed and "# base" not in printed
    assert not (tmp_path / "out").exists()

    # Every run's config is checked before anything starts: a misspelt option names the run and key.
    bad = write_spec(tmp_path, manifest, [{"name": "typo", "change": "", "overrides": ["model.num_layer=3"]}], "bad.yaml")
    assert experiments.main([str(bad)]) == 2
    assert "run 'typo'" in capsys.readouterr().err
    assert experiments.main([str(spec), "--only", "nope"]) == 2
    assert "--only nope" in capsys.readouterr().err


def test_experiments_only_needs_the_data_of_the_runs_it_runs(manifest, tmp_path, capsys):
    """A run's own training manifests are checked only when it is selected: the newer runs of a
    series still run after an older run's data is gone, and a selected run's missing data is named."""
    experiments = load_script("experiments")
    gone = tmp_path / "synth" / "manifest.jsonl"
    spec = write_spec(tmp_path, manifest, [
        {"name": "old", "change": "with data that is gone", "overrides": [], "train": [str(gone)]},
        {"name": "new", "change": "the spec's data", "overrides": ["model.num_layers=3"]},
    ])
    assert experiments.main([str(spec), "--dry-run", "--only", "new"]) == 0
    assert "# new" in capsys.readouterr().out
    for argv in ([str(spec), "--dry-run"], [str(spec), "--dry-run", "--only", "old"]):
        assert experiments.main(argv) == 2
        assert f"runs[1].train: {gone} not found" in capsys.readouterr().err


def test_bench_infer_with_an_untrained_model_of_a_config(manifest, tmp_path, capsys):
    """Throughput of a config's model shape without a trained checkpoint: all files read, RTFx positive."""
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump({"features": {"n_mels": 24}, "model": {"subsampling": "stack", "subsampling_factor": 2,
                                                                            "hidden_size": 32, "num_layers": 1}}))
    load_script("bench_infer").main([str(config), str(manifest), "--device", "cpu", "--threads", "1"])
    row = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| cpu")][0]
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert int(cells[1]) == 2 * len(TRANSCRIPTS) and float(cells[4]) > 0


def test_experiments_score_every_dev_set_and_a_run_may_train_on_its_own_manifests(manifest, tmp_path, monkeypatch):
    experiments = load_script("experiments")
    other = tmp_path / "other.jsonl"
    other.write_text("".join(manifest.read_text().splitlines(keepends=True)[:4]))
    spec = write_spec(tmp_path, manifest, [
        {"name": "base", "change": "nothing", "overrides": []},
        {"name": "small_data", "change": "4 utterances", "overrides": [], "train": [str(other)]},
    ])
    data = yaml.safe_load(spec.read_text())
    data["dev"] = [str(manifest), str(other)]
    spec.write_text(yaml.safe_dump(data))
    commands = []

    def record(command, log_path):
        commands.append(command)
        return run_in_process(command, log_path)

    monkeypatch.setattr(experiments, "run_logged", record)
    assert experiments.main([str(spec)]) == 0
    trains = [c for c in commands if c[3] == "train"]
    assert trains[1][trains[1].index("--train") + 1:trains[1].index("--dev")] == [str(other)]
    assert trains[0][trains[0].index("--dev") + 1:trains[0].index("--out")] == [str(manifest), str(other)]
    results = [json.loads(line) for line in (tmp_path / "out" / "results.jsonl").read_text().splitlines()]
    for row in results:
        assert row["greedy_wer"] >= 0 and row["greedy_other_wer"] >= 0 and row["cpu_minutes"] >= 0
    table = (tmp_path / "out" / "results.md").read_text()
    assert "| other greedy WER | other greedy CER |" in table and "| CPU min |" in table
    assert (tmp_path / "out" / "small_data" / "decode_other_greedy" / "wer.txt").is_file()


@needs_encoder
def test_cache_features_caches_the_speed_perturbed_copies_training_reads(manifest, tmp_path, monkeypatch):
    """scripts/cache_features.py --speed fills the cache so that a run with train.speed_perturb
    never calls the encoder: the keys of its perturbed copies are the ones training looks up."""
    from asr.frontend import whisper as pretrained

    small = tmp_path / "small.jsonl"
    small.write_text("".join(manifest.read_text().splitlines(keepends=True)[:3]))
    config = tmp_path / "whisper.yaml"
    config.write_text("features:\n  frontend: whisper\nmodel:\n  subsampling: stack\n  subsampling_factor: 2\n"
                      "  hidden_size: 16\n  num_layers: 1\n")
    cache = tmp_path / "cache"
    script = load_script("cache_features")
    assert script.main([str(config), str(small), "--cache", str(cache), "--speed", "0.9", "1.0", "1.1"]) == 0
    assert len(list(cache.rglob("*.npy"))) == 9  # 3 utterances x 3 speeds

    def no_encoder(*args):
        raise AssertionError("training computed features the cache should have held")

    monkeypatch.setattr(pretrained, "encode_log_mel", no_encoder)
    assert cli.main(["train", "--config", str(config), "--train", str(small), "--dev", str(small),
                     "--out", str(tmp_path / "exp"), "train.epochs=3", "train.max_batch_seconds=4",
                     "train.speed_perturb=[0.9,1.0,1.1]", "train.num_workers=0", f"train.feature_cache={cache}"]) == 0


def test_cache_features_takes_overrides_after_the_manifests(manifest, tmp_path):
    """`cache_features.py CONFIG a.jsonl b.jsonl features.finetune_blocks=0` (as the issue-23 series
    documents it): the override reaches the config instead of being read as a manifest."""
    from asr.config import ConfigError

    config = tmp_path / "whisper.yaml"
    config.write_text("features:\n  frontend: whisper\n")
    script = load_script("cache_features")
    with pytest.raises(ConfigError, match="no_such_key"):
        script.main([str(config), str(manifest), str(manifest), "features.no_such_key=1"])


def test_synthesize_speech_draws_the_same_plan_from_the_same_seed(tmp_path):
    synth = load_script("synthesize_speech")
    text = tmp_path / "text.txt"
    text.write_text("TOO SHORT\n" + "".join(f"THE {n} WORDS OF SENTENCE NUMBER {n} ARE HERE\n" for n in
                                           ("ONE", "TWO", "THREE", "FOUR")))
    sentences = synth.read_sentences(text, min_words=8, max_words=30)
    assert sentences[0] == "the one words of sentence number one are here" and len(sentences) == 4
    plan = synth.draw_plan(sentences, 3, ["awb", "slt"], (0.9, 1.1), seed=7)
    assert plan == synth.draw_plan(sentences, 3, ["awb", "slt"], (0.9, 1.1), seed=7)
    assert len({p["text"] for p in plan}) == 3 and all(0.9 <= p["stretch"] <= 1.1 for p in plan)
    assert {p["voice"] for p in plan} <= {"awb", "slt"}


@pytest.mark.skipif(shutil.which("flite") is None, reason="flite not installed (apt-get install flite)")
def test_synthesize_speech_writes_a_manifest_of_16_khz_speech(tmp_path):
    synth = load_script("synthesize_speech")
    text = tmp_path / "text.txt.gz"
    with gzip.open(text, "wt") as f:
        f.write("".join(f"A SHORT SENTENCE FOR THE TEST NUMBER {n}\n" for n in ("ONE", "TWO", "THREE")))
    assert synth.main([str(text), "--out", str(tmp_path / "out"), "--hours", "0.0001", "--voices", "kal16"]) == 0
    rows = [json.loads(line) for line in (tmp_path / "out" / "manifest.jsonl").read_text().splitlines()]
    assert rows and all(r["speaker"] == "flite-kal16" and r["text"].startswith("a short sentence") for r in rows)
    assert sum(r["duration"] for r in rows) >= 0.36  # stops once --hours is reached
    assert all(soundfile.info(r["audio"]).samplerate == 16000 for r in rows)
    assert len(list((tmp_path / "out" / "wav").glob("*.wav"))) == len(rows)


def test_synthesize_speech_plan_groups_share_a_voice_and_rate(tmp_path):
    synth = load_script("synthesize_speech")
    sentences = [f"sentence number {n} has a few more words in it" for n in range(20)]
    plan = synth.draw_plan(sentences, 10, ["a.onnx", "b.onnx"], (0.8, 1.2), seed=3, group=4)
    for start in (0, 4, 8):
        group = plan[start:start + 4]
        assert len({(p["voice"], p["stretch"]) for p in group}) == 1
    # group=1 is the per-sentence plan flite runs have always drawn (same seed, same plan)
    assert synth.draw_plan(sentences, 5, ["awb"], (0.9, 1.1), seed=3) == \
        synth.draw_plan(sentences, 5, ["awb"], (0.9, 1.1), seed=3, group=1)


FAKE_PIPER = '''#!{python}
# Stands in for Piper's command line: one 22.05 kHz file per input line, named by a rising clock,
# 0.1 s per word so a test can tell which file holds which line. --drop N skips the last N lines.
import argparse, time, numpy, soundfile
p = argparse.ArgumentParser()
for flag in ("-m", "-i", "-d", "--output-dir-naming", "--length-scale"):
    p.add_argument(flag)
p.add_argument("--noise-scale", default="0.1")  # the samples' value, so a test can read it back
args = p.parse_args()
lines = [line.strip() for line in open(args.i) if line.strip()]
if "missing" in args.m:
    lines = lines[:-1]
for line in lines:
    samples = numpy.full(int(2205 * len(line.split()) * float(args.length_scale)), float(args.noise_scale), dtype="float32")
    soundfile.write(f"{{args.d}}/{{time.monotonic_ns()}}.wav", samples, 22050)
'''


def fake_piper_setup(tmp_path: Path) -> tuple[Path, Path, Path]:
    """The fake piper program, an empty voice beside its .json, and 12 lines of 8-19 words."""
    piper = tmp_path / "piper"
    piper.write_text(FAKE_PIPER.format(python=sys.executable))
    piper.chmod(0o755)
    voice = tmp_path / "voice.onnx"
    voice.write_bytes(b"")
    (tmp_path / "voice.onnx.json").write_text("{}")
    text = tmp_path / "text.txt"
    text.write_text("".join(" ".join(["word"] * n) + "\n" for n in range(8, 20)))
    return piper, voice, text


def test_synthesize_speech_with_piper_maps_each_file_to_its_line(tmp_path):
    synth = load_script("synthesize_speech")
    piper, voice, text = fake_piper_setup(tmp_path)
    args = [str(text), "--out", str(tmp_path / "out"), "--hours", "0.001", "--engine", "piper",
            "--piper", str(piper), "--voices", str(voice), "--piper-batch", "3", "--stretch", "1", "1"]
    assert synth.main(args) == 0
    rows = [json.loads(line) for line in (tmp_path / "out" / "manifest.jsonl").read_text().splitlines()]
    assert len(rows) >= 2 and all(r["speaker"] == "piper-voice" for r in rows)
    assert all(r["duration"] == pytest.approx(0.1 * len(r["text"].split())) for r in rows)
    assert all(soundfile.info(r["audio"]).samplerate == 22050 for r in rows)
    assert sorted(p.name for p in (tmp_path / "out" / "wav").glob("*.wav")) == sorted(f"{r['id']}.wav" for r in rows)

    broken = tmp_path / "missing.onnx"
    broken.write_bytes(b"")
    (tmp_path / "missing.onnx.json").write_text("{}")
    with pytest.raises(RuntimeError, match="piper failed.*wrote 2 of 3 files"):
        synth.main(args[:-7] + ["--voices", str(broken), "--piper-batch", "3", "--stretch", "1", "1"])
    with pytest.raises(SystemExit):
        synth.main(args[:-7] + ["--voices", str(tmp_path / "none.onnx")])


def test_synthesize_speech_pitch_and_noise_vary_each_sentence_and_keep_the_seeds_plan(tmp_path):
    synth = load_script("synthesize_speech")
    sentences = [f"sentence number {n} has a few more words in it" for n in range(40)]
    plain = synth.draw_plan(sentences, 12, ["a.onnx", "b.onnx"], (0.8, 1.2), seed=5, group=4)
    varied = synth.draw_plan(sentences, 12, ["a.onnx", "b.onnx"], (0.8, 1.2), seed=5, group=4,
                             pitch=(0.9, 1.1), noise=(0.5, 0.9))
    # the same sentences, voices and rates as without the options: earlier seeds' sets stay reproducible
    assert [{k: p[k] for k in ("id", "text", "voice", "stretch")} for p in varied] == plain
    assert all(0.9 <= p["pitch"] <= 1.1 for p in varied) and len({p["pitch"] for p in varied}) > 6
    for start in (0, 4, 8):  # Piper's noise is one per batch
        assert len({p["noise_scale"] for p in varied[start:start + 4]}) == 1
    assert all(0.5 <= p["noise_scale"] <= 0.9 for p in varied)

    piper, voice, text = fake_piper_setup(tmp_path)
    assert synth.main([str(text), "--out", str(tmp_path / "out"), "--hours", "0.001", "--engine", "piper",
                       "--piper", str(piper), "--voices", str(voice), "--piper-batch", "3", "--stretch", "1", "1",
                       "--pitch", "1.25", "1.25", "--noise-scale", "0.25", "0.5"]) == 0
    rows = [json.loads(line) for line in (tmp_path / "out" / "manifest.jsonl").read_text().splitlines()]
    assert len(rows) >= 2
    for row in rows:  # played 1.25x faster: the header rate rises, the duration falls, samples unchanged
        audio, rate = soundfile.read(row["audio"])
        assert rate == round(22050 * 1.25)
        assert row["duration"] == pytest.approx(0.1 * len(row["text"].split()) / 1.25, abs=1e-3)
        assert 0.25 <= audio[0] <= 0.5 and audio.min() == audio.max()


def _room_and_speech(path: Path, head: float, speech: float, tail: float, rate: int = 16000) -> None:
    """A file of room noise (-50 dBFS), a loud tone (-9 dBFS), room noise again."""
    import numpy as np

    rng = np.random.default_rng(0)
    t = np.arange(int(speech * rate)) / rate
    parts = [0.00316 * rng.standard_normal(int(head * rate)), 0.5 * np.sin(2 * np.pi * 220 * t),
             0.00316 * rng.standard_normal(int(tail * rate))]
    soundfile.write(path, np.concatenate(parts).astype("float32"), rate)


def test_noise_segments_writes_the_room_before_and_after_the_speech(tmp_path, capsys):
    noise = load_script("noise_segments")
    _room_and_speech(tmp_path / "a.wav", 0.6, 1.0, 0.4)
    _room_and_speech(tmp_path / "b.wav", 0.1, 1.0, 0.5)  # a head shorter than the margin: none
    soundfile.write(tmp_path / "quiet.wav", torch.zeros(16000).numpy(), 16000)  # digital silence: nothing
    rows = [{"id": name, "audio": f"{name}.wav", "duration": 2.0, "text": "x"} for name in ("a", "b", "quiet")]
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "noise" / "room.jsonl"
    assert noise.main([str(tmp_path / "train.jsonl"), "--out", str(out)]) == 0
    assert "3 segments" in capsys.readouterr().out
    segments = {s["id"]: s for s in map(json.loads, out.read_text().splitlines())}
    assert sorted(segments) == ["a-head", "a-tail", "b-tail"]
    # the speech starts at 0.6 s and ends at 1.6 s; 0.1 s next to it is left out
    assert (segments["a-head"]["start"], segments["a-head"]["end"]) == (0.0, 0.5)
    assert (segments["a-tail"]["start"], segments["a-tail"]["end"]) == (1.7, 2.0)
    assert segments["b-tail"]["duration"] == pytest.approx(0.4)
    # the manifest is one SpeechDataset reads as noise: its audio paths resolve from the manifest's folder
    from asr.data import read_manifest, noise_excerpt
    import numpy as np

    utts = read_manifest(out)
    excerpt = noise_excerpt([u for u in utts if u.id == "a-head"], 16000, 16000, np.random.default_rng(0))
    level = 10 * np.log10(float(excerpt.double().pow(2).mean()))
    assert excerpt.shape == (16000,) and -52 < level < -48  # room noise only, repeated to a second


def test_noise_segments_refuses_segments_and_writes_nothing_when_nothing_is_found(tmp_path, capsys):
    noise = load_script("noise_segments")
    soundfile.write(tmp_path / "quiet.wav", torch.zeros(16000).numpy(), 16000)
    (tmp_path / "quiet.jsonl").write_text(json.dumps({"id": "q", "audio": "quiet.wav", "duration": 1.0, "text": "x"}) + "\n")
    out = tmp_path / "room.jsonl"
    assert noise.main([str(tmp_path / "quiet.jsonl"), "--out", str(out)]) == 1
    assert "no stretch of room noise" in capsys.readouterr().err and not out.exists()
    (tmp_path / "seg.jsonl").write_text(json.dumps({"id": "s", "audio": "quiet.wav", "duration": 0.5, "text": "x",
                                                    "start": 0.2, "end": 0.7}) + "\n")
    with pytest.raises(ValueError, match="s .*quiet.wav.*segments of long recordings"):
        noise.main([str(tmp_path / "seg.jsonl"), "--out", str(out)])
    assert not out.exists() and not (tmp_path / "room.jsonl.partial").exists()  # no half manifest left behind


def test_serve_upload_memory_reports_the_refusal_and_the_decode(tmp_path, capsys, monkeypatch):
    """scripts/serve_upload_memory.py on a small file: refused over --max-samples, decoded under it."""
    script = load_script("serve_upload_memory")
    keep = tmp_path / "silence.flac"
    small = ["--channels", "2", "--rate", "16000", "--seconds", "3", "--keep", str(keep)]
    monkeypatch.setattr(sys, "argv", ["serve_upload_memory.py", *small, "--max-samples", "1000"])
    script.main()
    assert "refused 413: file 'silence.flac' would decode to 2 channel(s) x 48,000 frames" in capsys.readouterr().out
    assert keep.is_file()
    monkeypatch.setattr(sys, "argv", ["serve_upload_memory.py", *small])
    script.main()
    assert "decoded (48000, 2) at 16000 Hz" in capsys.readouterr().out


def test_errors_by_word_count_bins_reference_words_by_their_count_in_the_text(tmp_path, capsys):
    errors = load_script("errors_by_word_count")
    ref = tmp_path / "ref.txt"
    ref.write_text("u1\tthe cat saw lecoq\nu2\tthe dog ran home\n", encoding="utf-8")
    hyp = tmp_path / "hyp.txt"
    hyp.write_text("u1\tthe cat saw look\nu2\tthe dog ran and home\n", encoding="utf-8")  # lecoq -> look; 'and' inserted
    text = tmp_path / "lm.txt.gz"
    with gzip.open(text, "wt", encoding="utf-8") as f:
        f.write("THE CAT RAN.\n" * 12 + "The dog saw home.\n")
    assert errors.main([str(ref), str(hyp), "--text", str(text), "--edges", "1", "10"]) == 0
    out = capsys.readouterr().out
    # the: 13+1 seen (10 or more), cat/ran 12, dog/saw/home 1, lecoq never.
    assert "| never | 1 | 100.0% | 50.0% |" in out
    assert "| 1-9 | 3 | 0.0% | 0.0% |" in out
    assert "| 10 or more | 4 | 0.0% | 0.0% |" in out
    assert "| insertions | — | — | 50.0% |" in out and "(2 word errors in all)" in out
    assert errors.main([str(ref), str(hyp), "--text", str(tmp_path / "missing.txt")]) == 1
    assert "missing.txt: text file not found" in capsys.readouterr().err

"""Recipes are thin shell scripts over `asr` subcommands: check their staging and option handling
on a tiny FSDD-layout corpus of generated audio (no network, about a minute)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import soundfile

ROOT = Path(__file__).resolve().parents[1]
WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def _env() -> dict:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"  # the `asr` of this Python
    return env


def _run(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run(list(args), cwd=cwd, env=_env(), capture_output=True, text=True, timeout=600)


def _fsdd_fixture(folder: Path) -> Path:
    rng = np.random.default_rng(0)
    recordings = folder / "recordings"
    recordings.mkdir(parents=True)
    for digit in (1, 2):
        for take in range(8):  # takes 0-4 are the official test split
            t = np.arange(int(0.5 * 8000)) / 8000
            wave = 0.3 * np.sin(2 * np.pi * (300 + 200 * digit) * t) + 0.01 * rng.standard_normal(len(t))
            soundfile.write(recordings / f"{digit}_synth_{take}.wav", wave.astype(np.float32), 8000)
    return folder


def test_fsdd_recipe_runs_all_stages(tmp_path):
    corpus = _fsdd_fixture(tmp_path / "fsdd")
    work = tmp_path / "work"
    result = _run(
        "bash", "recipes/fsdd/run.sh", "--corpus-dir", str(corpus), "--work-dir", str(work),
        "--train-args", "train.epochs=2 train.num_workers=0 train.device=cpu model.hidden_size=16 model.num_layers=1",
        "--decode-args", "--device cpu",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    for stage in range(1, 5):
        assert f"[stage {stage}]" in result.stdout
    assert len((work / "data" / "train.jsonl").read_text().splitlines()) == 6
    assert len((work / "data" / "test.jsonl").read_text().splitlines()) == 10
    assert (work / "exp" / "fsdd" / "best.pt").is_file()
    assert len((work / "exp" / "fsdd" / "decode_test" / "hyp.txt").read_text().splitlines()) == 10
    assert "%WER" in (work / "exp" / "fsdd" / "wer.txt").read_text()

    # --stage/--stop-stage: scoring alone re-runs nothing else.
    again = _run("bash", "recipes/fsdd/run.sh", "--corpus-dir", str(corpus), "--work-dir", str(work),
                 "--stage", "4", "--stop-stage", "4")
    assert again.returncode == 0, again.stderr[-3000:]
    assert "[stage 4]" in again.stdout and "[stage 2]" not in again.stdout


def test_recipe_options_are_checked():
    for recipe in ("recipes/fsdd/run.sh", "recipes/librispeech/run.sh"):
        bad = _run("bash", recipe, "--no-such-option", "1")
        assert bad.returncode == 2 and "unknown option --no-such-option" in bad.stderr
        help_text = _run("bash", recipe, "--help")
        assert help_text.returncode == 0 and "--corpus-dir" in help_text.stdout and "--stop-stage" in help_text.stdout


def test_librispeech_download_stage_fails_fast_without_network(tmp_path):
    # No --corpus-dir and no network here: the download stage must stop with a pointer to --corpus-dir.
    result = _run("bash", "recipes/librispeech/run.sh", "--work-dir", str(tmp_path), "--stop-stage", "0")
    assert result.returncode != 0
    assert "--corpus-dir" in result.stderr

"""The corpus recipes added for issue 6: option handling, and the prepare stage on fixtures in each
corpus's format (training is covered by the FSDD recipe test; these stop after stage 1)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from test_prepare_corpora import an4  # noqa: F401  (fixtures in the corpora's formats)

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ["an4", "commonvoice", "tedlium", "ljspeech"]


def _run(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    return subprocess.run(list(args), cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("recipe", RECIPES)
def test_options_help_and_config(recipe):
    script = f"recipes/{recipe}/run.sh"
    bad = _run("bash", script, "--no-such-option", "1")
    assert bad.returncode == 2 and "unknown option --no-such-option" in bad.stderr
    help_text = _run("bash", script, "--help")
    assert help_text.returncode == 0
    for option in ("--stage", "--stop-stage", "--corpus-dir", "--config", "--train-args"):
        assert option in help_text.stdout
    assert (ROOT / "conf" / f"{recipe}.yaml").is_file()
    # The README says what the corpus is (its licence and size); what it says about results changes
    # as runs are recorded, so it is not checked here.
    readme = (ROOT / "recipes" / recipe / "README.md").read_text()
    assert "Licence" in readme and "Size" in readme
    assert f"recipes/{recipe}/run.sh" in (ROOT / "README.md").read_text()


def test_an4_prepare_stage(an4, tmp_path):  # noqa: F811
    result = _run("bash", "recipes/an4/run.sh", "--corpus-dir", str(an4 / "an4"), "--work-dir", str(tmp_path),
                  "--stage", "1", "--stop-stage", "1")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "[stage 1]" in result.stdout and "[stage 0]" not in result.stdout and "[stage 2]" not in result.stdout
    assert "an4: 3 utterances kept" in result.stdout and "an4: 1 utterances kept" in result.stdout
    assert len((tmp_path / "data" / "train.jsonl").read_text().splitlines()) == 3
    assert len((tmp_path / "data" / "test.jsonl").read_text().splitlines()) == 1


def test_commonvoice_needs_an_archive_or_a_folder(tmp_path):
    result = _run("bash", "recipes/commonvoice/run.sh", "--work-dir", str(tmp_path))
    assert result.returncode == 2 and "--archive" in result.stderr and "--corpus-dir" in result.stderr

"""scripts/tune_decoder.py: the paths it writes into a decode config."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "tune_decoder.py"


def load_script():
    spec = importlib.util.spec_from_file_location("script_tune_decoder", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


tune = load_script()


def test_paths_beside_the_decode_file_are_written_relative(tmp_path, monkeypatch):
    """models/decode.yaml names models/en-3gram.bin as 'en-3gram.bin', so the folder can move;
    an LM elsewhere keeps its absolute path."""
    models = tmp_path / "models"
    models.mkdir()
    monkeypatch.chdir(tmp_path)
    assert tune.portable_path("models/lm.arpa.gz", models / "decode.yaml") == "lm.arpa.gz"
    assert tune.portable_path(models / "sub" / "lex.txt", models / "decode.yaml") == str(Path("sub") / "lex.txt")
    assert tune.portable_path(tmp_path / "lm" / "big.arpa", models / "decode.yaml") == str(tmp_path / "lm" / "big.arpa")


def test_curve_table_fastest_first_by_cpu_time_with_rtfx():
    """One row per setting, ordered by the search's CPU seconds, RTFx = audio seconds / seconds."""
    results = [(15.6, 7.7, 200, 50.0, 3.5, 1.0, 110.0, 44.0), (18.7, 9.4, 25, 15.0, 3.5, 1.0, 5.0, 2.0)]
    lines = tune.curve_table(results, audio_seconds=220.0, greedy_wer=32.7, greedy_cer=10.6).splitlines()
    assert lines[2] == "| 25 | 15 | 3.5 | 1 | 18.70 | 9.40 | 5.0 | 44.0 | 110.0 |"
    assert lines[3] == "| 200 | 50 | 3.5 | 1 | 15.60 | 7.70 | 110.0 | 2.0 | 5.0 |"
    assert lines[4].startswith("| greedy |") and "32.70" in lines[4]

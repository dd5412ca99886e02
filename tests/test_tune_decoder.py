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

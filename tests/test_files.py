"""asr.files: an atomic write leaves the old file whole when the writer fails, and no temporary file
either way."""

from __future__ import annotations

import pytest

from asr.files import remove_stale_temp_files, temp_path, write_atomic, write_text_atomic


@pytest.mark.parametrize("durable", [True, False])
def test_write_atomic_replaces_whole_or_not_at_all(tmp_path, durable):
    path = tmp_path / "sub" / "out.txt"
    write_text_atomic(path, "first\n")
    assert path.read_text() == "first\n"

    def fail(f):
        f.write(b"half of the sec")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_atomic(path, fail, durable=durable)
    assert path.read_text() == "first\n"
    write_atomic(path, lambda f: f.write(b"second\n"), durable=durable)
    assert path.read_text() == "second\n"
    assert sorted(p.name for p in path.parent.iterdir()) == ["out.txt"]


def test_stale_temp_files_of_killed_writers_are_removed(tmp_path):
    path = tmp_path / "model.pt"
    stale = temp_path(path).with_name(f".{path.name}.tmp99999")
    stale.write_bytes(b"partial")
    write_text_atomic(path, "done")
    assert remove_stale_temp_files(path) == [stale]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt"]


def test_checkpoint_entries_read_config_and_tokenizer_without_torch(tmp_path):
    """asr.files.checkpoint_entries gives the config and tokenizer torch.load gives, from a
    checkpoint with float, int and half tensors in nested state dicts, in a fresh interpreter that
    never imports torch."""
    import subprocess
    import sys

    import torch

    from asr.checkpoint import save_checkpoint

    layer = torch.nn.Linear(3, 2)
    payload = {"config": {"model": {"hidden_size": 8}, "decode": {"decoder": "beam-lm", "lm_weight": 1.5}},
               "tokenizer": {"type": "char", "symbols": ["<blank>", " ", "a"]},
               "model": layer.state_dict(), "optimizer": {"state": {0: {"step": torch.tensor(3)}}},
               "ema": {k: v.half() for k, v in layer.state_dict().items()}}
    path = tmp_path / "model.pt"
    save_checkpoint(path, payload)
    loaded = torch.load(path, weights_only=True)
    code = ("import json, sys; from asr.files import checkpoint_entries; e = checkpoint_entries(sys.argv[1]); "
            "print(json.dumps(e)); print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=120, check=True)
    entries, torch_imported = out.stdout.splitlines()
    import json

    assert json.loads(entries) == {"config": loaded["config"], "tokenizer": loaded["tokenizer"]}
    assert torch_imported == "False"


def test_checkpoint_entries_refuse_what_a_checkpoint_does_not_hold(tmp_path):
    """A pickle naming any other global (here os.system) is refused before anything is called; so
    is a file that is no torch zip."""
    import os
    import pickle
    import zipfile

    from asr.files import checkpoint_entries

    class Calls:  # pickles as a call of os.system
        def __reduce__(self):
            return (os.system, ("touch " + str(tmp_path / "ran"),))

    path = tmp_path / "evil.pt"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", pickle.dumps({"config": {}, "tokenizer": Calls()}, protocol=2))
    with pytest.raises(ValueError, match="evil.pt: cannot read the checkpoint without torch.*system"):
        checkpoint_entries(path)
    assert not (tmp_path / "ran").exists()
    (tmp_path / "text.pt").write_text("not a zip")
    with pytest.raises(ValueError, match="text.pt: cannot read the checkpoint"):
        checkpoint_entries(tmp_path / "text.pt")

"""asr.checkpoint's safe loading: a crafted checkpoint whose pickle runs code is refused by every
command that loads one, without running it; incomplete checkpoints are one clear error listing what
is missing; checkpoints of older asr versions (numpy RNG state) are converted by the one explicit
path, `asr upgrade-checkpoint`, and then resume exactly."""

from __future__ import annotations

import random
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

torch.set_num_threads(1)

from asr.checkpoint import (  # noqa: E402
    RESUME_ENTRIES, load_data_file, load_model, read_checkpoint, save_checkpoint, upgrade_checkpoint,
)
from asr.cli import main  # noqa: E402
from asr.config import load_config  # noqa: E402
from asr.model import CTCModel  # noqa: E402
from asr.text import CharTokenizer  # noqa: E402
from synth import write_synth_corpus  # noqa: E402

OVERRIDES = ["model.subsampling=stack", "model.subsampling_factor=2", "model.hidden_size=16", "model.num_layers=1",
             "features.n_mels=24", "train.epochs=1", "train.max_batch_seconds=4", "train.num_workers=0",
             "train.device=cpu", "train.log_every=2"]


class Exploit:
    """Pickles as a call of exec(): loading it with the full unpickler writes `marker`."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({str(self.marker)!r}, 'w').write('code ran')",)


def payload() -> dict:
    config = load_config(None, OVERRIDES)
    tokenizer = CharTokenizer()
    torch.manual_seed(0)
    model = CTCModel(config.features, config.model, len(tokenizer))
    return {"config": config.to_dict(), "tokenizer": tokenizer.to_dict(), "model": model.state_dict()}


@pytest.fixture
def evil(tmp_path) -> tuple[Path, Path]:
    """(a real, complete resume checkpoint, written by torch.save, that also holds an Exploit; its marker)."""
    marker = tmp_path / "marker"
    path = tmp_path / "evil" / "last.pt"
    path.parent.mkdir()
    data = {**payload(), "optimizer": {}, "scheduler": {}, "state": {}, "rng": {}, "metadata": {"note": Exploit(marker)}}
    torch.save(data, path)
    # The file really is an exploit: the unrestricted unpickler runs it.
    torch.load(path, weights_only=False)
    assert marker.read_text() == "code ran"
    marker.unlink()
    return path, marker


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return write_synth_corpus(tmp_path_factory.mktemp("synth"))


def run(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_every_command_refuses_a_checkpoint_that_runs_code(evil, corpus, tmp_path, capsys):
    path, marker = evil
    good = tmp_path / "good.pt"
    save_checkpoint(good, payload())
    wav = corpus.parent / "utt00.wav"
    commands = {
        "transcribe": ["transcribe", "--model", path, wav],
        "transcribe (old form)": ["transcribe", path, wav],
        "decode": ["decode", path, corpus, "--out", tmp_path / "hyp.txt"],
        "train --resume": ["train", "--train", corpus, "--dev", corpus, "--out", path.parent, "--resume", *OVERRIDES],
        "train --force-resume": ["train", "--train", corpus, "--dev", corpus, "--out", path.parent, "--force-resume",
                                 *OVERRIDES],
        "average": ["average", good, path, "--out", tmp_path / "avg.pt"],
        "export model": ["export", "model", path, "--out", tmp_path / "exported.pt"],
        "lm lexicon --model": ["lm", "lexicon", corpus, "--model", path, "--out", tmp_path / "lexicon.txt"],
        "upgrade-checkpoint": ["upgrade-checkpoint", path, "--out", tmp_path / "upgraded.pt"],
    }
    for name, argv in commands.items():
        code, out, err = run(capsys, *argv)
        assert code == 2, (name, out, err)
        assert f"{path}: refused: loading this file would run Python code" in err, (name, err)
        assert "builtins.exec" in err, (name, err)  # says what the file would have run
        assert not marker.exists(), f"{name} ran the file's code"
    for load in (load_model, read_checkpoint, load_data_file):  # the Python API, which `asr serve` calls
        with pytest.raises(ValueError, match="refused: loading this file would run Python code"):
            load(path)
        assert not marker.exists(), f"{load.__name__} ran the file's code"
    assert not (tmp_path / "avg.pt").exists() and not (tmp_path / "exported.pt").exists()
    assert not (tmp_path / "upgraded.pt").exists()


@pytest.mark.parametrize("drop, message", [
    (["tokenizer"], "missing tokenizer"),
    (["model", "tokenizer"], "missing tokenizer, model"),
    (["config", "model", "tokenizer"], r"missing config, tokenizer, model \(it holds: format_version, note\); "
                                       "is it an asr checkpoint at all"),
])
def test_incomplete_checkpoint_is_one_clear_error(tmp_path, capsys, drop, message):
    path = tmp_path / "partial.pt"
    save_checkpoint(path, {**{k: v for k, v in payload().items() if k not in drop}, "note": "x"})
    wav = write_synth_corpus(tmp_path / "synth", ["a bad cab"]).parent / "utt00.wav"
    code, out, err = run(capsys, "transcribe", "--model", path, wav)
    assert code == 2 and out == ""
    assert f"asr transcribe: error: {path}: incomplete checkpoint: " in err
    assert err.count("\n") == 1 and "Traceback" not in err and "KeyError" not in err
    assert re.search(message, err), err


def test_malformed_entries_and_weights_that_do_not_fit(tmp_path):
    path = tmp_path / "odd.pt"
    save_checkpoint(path, {**payload(), "tokenizer": "abc"})
    with pytest.raises(ValueError, match=r"odd\.pt: incomplete checkpoint: malformed tokenizer \(a str, not a dict\)"):
        load_model(path)
    weights = payload()["model"]
    weights["output.weight"] = weights["output.weight"][:, :3]
    save_checkpoint(path, {**payload(), "model": weights})
    with pytest.raises(ValueError, match=r"odd\.pt: the weights do not fit the model its config and tokenizer describe "
                                         r"\(1 of other shape, e\.g\. output\.weight \[29, 3\] where the model has "
                                         r"\[29, 32\]\)"):
        load_model(path)


def test_a_model_file_cannot_be_resumed_from(tmp_path):
    path = tmp_path / "best.pt"
    save_checkpoint(path, payload())
    with pytest.raises(ValueError, match=r"best\.pt: incomplete checkpoint: missing optimizer, scheduler, state, rng.*"
                                         r"cannot be resumed from, only last\.pt"):
        read_checkpoint(path, required=RESUME_ENTRIES)


def _write_old_format(path: Path) -> None:
    """A checkpoint as asr wrote them before the safe format: the numpy RNG state as a numpy array,
    and the torch version as a TorchVersion in an export's metadata."""
    data = torch.load(path, weights_only=True)
    data["rng"]["numpy"] = np.random.RandomState(7).get_state()
    data["metadata"] = {"versions": {"torch": torch.__version__}}
    torch.save(data, path)


def test_old_checkpoints_are_refused_with_the_way_to_convert_them(corpus, tmp_path, capsys):
    from asr.data import read_manifest
    from asr.training import train

    utts = read_manifest(corpus)
    out = tmp_path / "run"
    train(load_config(None, OVERRIDES + ["train.max_steps=2"]), utts, utts[:2], out)
    _write_old_format(out / "last.pt")
    code, _, err = run(capsys, "train", "--train", corpus, "--dev", corpus, "--out", out, "--resume", *OVERRIDES)
    assert code == 2
    assert (f"{out / 'last.pt'}: written by an older asr: it holds numpy arrays" in err and
            f"asr upgrade-checkpoint {out / 'last.pt'} --out NEW.pt" in err), err

    code, text, err = run(capsys, "upgrade-checkpoint", out / "last.pt", "--out", out / "last.pt")
    assert code == 0 and "converted rng.numpy[1]" in text, err
    upgraded = read_checkpoint(out / "last.pt", required=RESUME_ENTRIES)
    kind, keys, pos, has_gauss, cached = upgraded["rng"]["numpy"]
    expected = np.random.RandomState(7).get_state()
    assert kind == expected[0] and np.array_equal(np.asarray(keys, dtype=np.uint32), expected[1])
    assert (pos, has_gauss, cached) == expected[2:]
    assert upgraded["metadata"]["versions"]["torch"] == str(torch.__version__)
    # ... and the run resumes from it.
    code, _, err = run(capsys, "train", "--train", corpus, "--dev", corpus, "--out", out, "--resume", *OVERRIDES)
    assert code == 0, err


def test_rng_state_survives_the_safe_format_exactly(tmp_path):
    """The RNG states a checkpoint stores (numpy's as a tensor) restore the very same streams."""
    from asr.training.state import get_rng_state, set_rng_state

    random.seed(3)
    np.random.seed(3)
    np.random.standard_normal()  # a cached Gaussian in numpy's state
    generator = torch.Generator().manual_seed(5)
    save_checkpoint(tmp_path / "rng.pt", {**payload(), "rng": get_rng_state(generator)})
    expected = (random.random(), np.random.standard_normal(3).tolist(), torch.rand(3), torch.rand(3, generator=generator))
    set_rng_state(read_checkpoint(tmp_path / "rng.pt")["rng"], generator)
    got = (random.random(), np.random.standard_normal(3).tolist(), torch.rand(3), torch.rand(3, generator=generator))
    assert got[:2] == expected[:2] and torch.equal(got[2], expected[2]) and torch.equal(got[3], expected[3])


def test_exports_written_before_the_safe_format_still_load(tmp_path):
    """Old exports held the torch version as a TorchVersion (a str subclass), which stays readable."""
    path = tmp_path / "export.pt"
    torch.save({"format_version": 1, **payload(), "metadata": {"versions": {"torch": torch.__version__}}}, path)
    model, tokenizer, _ = load_model(path)
    assert len(tokenizer) == 29 and not model.training
    shutil.copy(path, tmp_path / "copy.pt")
    assert read_checkpoint(tmp_path / "copy.pt")["metadata"]["versions"]["torch"] == str(torch.__version__)


def test_files_that_are_not_checkpoints_are_named_in_plain_words(tmp_path):
    """Issue 29: random bytes gave "would run Python code" with torch's advice to set
    weights_only=False, an empty file "EOFError: "; each now says what the file is."""
    import os

    save_checkpoint(tmp_path / "model.pt", payload())
    model_bytes = (tmp_path / "model.pt").read_bytes()
    cases = {
        "random.pt": (os.urandom(4096), "not a checkpoint: checkpoints are files written by torch.save"),
        "empty.pt": (b"", "empty file (0 bytes), not a checkpoint"),
        "text.pt": (b"hello, not a model\n", "not a checkpoint: checkpoints are files written by torch.save"),
        "cut.pt": (model_bytes[: len(model_bytes) // 2], "damaged or not a checkpoint: torch cannot read it"),
        "pickle.pt": (b"\x80\x02" + bytes(range(200, 256)), "damaged or not a checkpoint"),
    }
    for name, (data, message) in cases.items():
        (tmp_path / name).write_bytes(data)
        for read in (load_data_file, lambda p: upgrade_checkpoint(p, tmp_path / "new.pt")):
            with pytest.raises(ValueError) as info:
                read(tmp_path / name)
            text = str(info.value)
            assert text.startswith(f"{tmp_path / name}: {message}"), text
            assert "weights_only" not in text and "would run Python code" not in text and "\n" not in text, text

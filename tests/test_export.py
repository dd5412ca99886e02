"""Shipping a model: `asr export model` (compact fp16 inference checkpoint), `asr average` (checkpoint
averaging), and the default model of `asr transcribe` (asr.transcribe.default_model_path)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import soundfile
import torch
import yaml

torch.set_num_threads(1)

import asr.transcribe  # noqa: E402
from asr.checkpoint import (  # noqa: E402
    average_checkpoints, expand_checkpoint_paths, export_model, load_model, read_checkpoint, save_checkpoint,
)
from asr.cli import main  # noqa: E402
from asr.config import load_config  # noqa: E402
from asr.decode import decode_settings  # noqa: E402
from asr.transcribe import transcribe_waves  # noqa: E402
from asr.model import CTCModel, count_parameters  # noqa: E402
from asr.text import CharTokenizer  # noqa: E402
from asr.transcribe import DEFAULT_MODEL, default_model_path  # noqa: E402
from synth import TRANSCRIPTS, synth_utterance  # noqa: E402

CPU = torch.device("cpu")
OVERRIDES = ["model.subsampling=stack", "model.subsampling_factor=4", "model.hidden_size=32", "model.num_layers=2"]


def make_checkpoint(path: Path, seed: int = 0, overrides: list[str] = (), tokenizer: CharTokenizer | None = None,
                    training_state: bool = True) -> Path:
    """A random small model with non-trivial normalizer statistics and a scaled-up output layer (so
    transcripts vary), saved as training would save it: with optimizer, scheduler, counters and RNG."""
    config = load_config(None, OVERRIDES + list(overrides))
    tokenizer = tokenizer or CharTokenizer()
    torch.manual_seed(seed)
    model = CTCModel(config.features, config.model, len(tokenizer))
    with torch.no_grad():
        n_mels = config.features.n_mels
        model.normalizer.set_stats(torch.linspace(-9.0, -4.0, n_mels) + seed, torch.linspace(2.0, 3.0, n_mels))
        model.output.weight.mul_(8)
    payload = {"config": config.to_dict(), "tokenizer": tokenizer.to_dict(), "model": model.state_dict()}
    if training_state:
        optimizer = torch.optim.AdamW(model.parameters())
        payload.update(optimizer=optimizer.state_dict(), scheduler={"last_epoch": 7},
                       state={"step": 120, "epoch": 3, "best_wer": 41.5, "best_cer": 17.25}, rng={"torch": torch.get_rng_state()})
    save_checkpoint(path, payload)
    return path


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("exp") / "best.pt")


@pytest.fixture(scope="module")
def waves() -> list[torch.Tensor]:
    return [torch.from_numpy(synth_utterance(text, seed=i)) for i, text in enumerate(TRANSCRIPTS[:4])]


def run(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


# --------------------------------------------------------------------------- asr export model


def test_export_is_compact_and_decodes_like_the_source(source, waves, tmp_path):
    out = tmp_path / "model.pt"
    size, metadata = export_model(source, out, note="4 h of LibriSpeech")
    assert size == out.stat().st_size
    size32, _ = export_model(source, tmp_path / "model32.pt", dtype="float32")
    assert size < size32 - 1.9 * metadata["parameters"]  # 2 bytes per parameter saved
    assert size < source.stat().st_size
    payload = read_checkpoint(out)
    assert set(payload) == {"format_version", "config", "tokenizer", "model", "metadata"}  # no optimizer/state/rng
    model, tokenizer, _ = load_model(source, CPU)
    exported, exported_tokenizer, _ = load_model(out, CPU)
    assert exported_tokenizer.symbols == tokenizer.symbols
    learned = {name for name, _ in model.named_parameters()}
    source_state = model.state_dict()
    for name, value in payload["model"].items():
        if name in learned:
            assert value.dtype == torch.float16, name
            assert torch.equal(value, source_state[name].half()), name
        else:  # normalizer mean/std, mel filterbank, window: exact float32
            assert value.dtype == torch.float32, name
            assert torch.equal(value, source_state[name]), name
    assert {"normalizer.mean", "normalizer.std"} <= payload["model"].keys() - learned
    assert metadata == payload["metadata"]
    assert metadata["source"] == f"{source.parent.name}/best.pt"
    assert metadata["parameters"] == count_parameters(model)
    assert metadata["note"] == "4 h of LibriSpeech"
    assert metadata["dtype"] == "float16"
    assert metadata["created"][:2] == "20"
    assert metadata["trained"] == {"epoch": 3, "step": 120, "best_wer": 41.5, "best_cer": 17.25}

    assert transcribe_waves(exported, tokenizer, waves, CPU) == transcribe_waves(model, tokenizer, waves, CPU)
    assert any(transcribe_waves(model, tokenizer, waves, CPU))  # the comparison is not between empty strings
    batch = torch.nn.utils.rnn.pad_sequence(waves, batch_first=True)
    lengths = torch.tensor([w.shape[0] for w in waves])
    with torch.no_grad():
        log_probs, frames = model(batch, lengths)
        log_probs16, frames16 = exported(batch, lengths)
    assert torch.equal(frames, frames16)
    mask = torch.arange(log_probs.shape[1])[None, :] < frames[:, None]
    assert (log_probs - log_probs16).abs()[mask].max() < 0.01


def test_export_float32_keeps_weights_exactly(source, tmp_path):
    out = tmp_path / "model32.pt"
    export_model(source, out, dtype="float32")
    original = read_checkpoint(source)["model"]
    exported = read_checkpoint(out)["model"]
    assert exported.keys() == original.keys()
    for name in original:
        assert exported[name].dtype == original[name].dtype
        assert torch.equal(exported[name], original[name]), name


def test_export_stores_decode_settings_without_lm_paths(tmp_path):
    source = make_checkpoint(tmp_path / "exp" / "best.pt")
    lm, lexicon = str(tmp_path / "lm" / "3gram.arpa"), str(tmp_path / "lm" / "lexicon.txt")
    (tmp_path / "exp" / "decode.yaml").write_text(yaml.safe_dump({"decode": {
        "decoder": "beam-lm", "lm": lm, "lexicon": lexicon, "lm_weight": 0.7, "word_score": -1.5, "beam_size": 33}}))
    out = tmp_path / "ship" / "model.pt"
    _, metadata = export_model(source, out)
    assert metadata["decode_from"] == "decode.yaml"
    assert "3gram.arpa" in metadata["decode_note"] and "--lm FILE" in metadata["decode_note"]
    assert str(tmp_path) not in repr(read_checkpoint(out))  # no path of this machine inside the file

    _, _, config = load_model(out)
    # No decode.yaml next to the exported file: its stored settings are the defaults.
    settings = decode_settings(config.decode, out)
    assert (settings.lm_weight, settings.word_score, settings.beam_size) == (0.7, -1.5, 33)
    assert (settings.lm, settings.lexicon) == ("", "")
    assert settings.decoder == "greedy"  # beam-lm needs an LM file the model does not carry
    with_lm = decode_settings(config.decode, out, decoder="beam-lm", lm=lm)
    assert (with_lm.decoder, with_lm.lm, with_lm.lm_weight) == ("beam-lm", lm, 0.7)
    # A decode.yaml next to the exported file still takes precedence.
    (out.parent / "decode.yaml").write_text("lm_weight: 1.25\n")
    assert decode_settings(config.decode, out).lm_weight == 1.25


def test_export_max_mb_error_names_file_and_size(source, tmp_path):
    out = tmp_path / "big.pt"
    with pytest.raises(ValueError, match=r"big\.pt: the exported model would be 0\.\d MB, over --max-mb 0\.01"):
        export_model(source, out, max_mb=0.01)
    assert not out.exists()


def test_export_refuses_to_overwrite_source(tmp_path):
    source = make_checkpoint(tmp_path / "best.pt")
    with pytest.raises(ValueError, match="overwrite its source"):
        export_model(source, tmp_path / "best.pt")
    assert "optimizer" in read_checkpoint(source)


def test_export_float16_overflow_is_an_error(tmp_path):
    path = make_checkpoint(tmp_path / "best.pt", training_state=False)
    payload = read_checkpoint(path)
    payload["model"]["output.bias"][0] = 1e6
    save_checkpoint(path, payload)
    with pytest.raises(ValueError, match=r"output\.bias.*float16.*--dtype float32"):
        export_model(path, tmp_path / "model.pt")
    export_model(path, tmp_path / "model.pt", dtype="float32")


def test_export_model_cli(capsys, source, tmp_path):
    out = tmp_path / "cli.pt"
    code, stdout, _ = run(capsys, "export", "model", source, "--out", out, "--note", "hello", "--max-mb", 25)
    assert code == 0
    assert f"wrote {out}: 0." in stdout and "MB" in stdout and "float16" in stdout
    assert read_checkpoint(out)["metadata"]["note"] == "hello"
    code, stdout, err = run(capsys, "export", "model", source, "--out", tmp_path / "x.pt", "--max-mb", 0.001)
    assert code == 2
    assert "x.pt" in err and "MB, over --max-mb 0.001" in err
    code, _, err = run(capsys, "export", "model", tmp_path / "missing.pt", "--out", tmp_path / "y.pt")
    assert code == 2 and "missing.pt" in err


# --------------------------------------------------------------------------- asr average


def test_average_is_the_mean_of_the_weights(tmp_path):
    a = make_checkpoint(tmp_path / "epoch1.pt", seed=1)
    b = make_checkpoint(tmp_path / "epoch2.pt", seed=2, overrides=["train.epochs=30"])  # train may differ
    payload = average_checkpoints([a, b])
    assert set(payload) == {"config", "tokenizer", "model", "metadata"}
    first, second = read_checkpoint(a)["model"], read_checkpoint(b)["model"]
    for name, value in payload["model"].items():
        assert value.dtype == torch.float32
        torch.testing.assert_close(value, (first[name] + second[name]) / 2, rtol=0, atol=1e-6)
    assert not torch.equal(first["output.weight"], second["output.weight"])
    assert payload["config"]["train"]["epochs"] == 30  # config from the last
    assert payload["metadata"]["averaged"] == [f"{tmp_path.name}/epoch1.pt", f"{tmp_path.name}/epoch2.pt"]
    model, _, _ = load_model(a)  # the average loads as a model and runs
    save_checkpoint(tmp_path / "avg.pt", payload)
    averaged, _, _ = load_model(tmp_path / "avg.pt")
    assert torch.equal(averaged.output.bias, payload["model"]["output.bias"])


def test_average_of_identical_checkpoints_is_exact(tmp_path):
    a = make_checkpoint(tmp_path / "a.pt", seed=3)
    copies = []
    for name in ("b.pt", "c.pt"):
        (tmp_path / name).write_bytes(a.read_bytes())
        copies.append(tmp_path / name)
    payload = average_checkpoints([a, *copies])
    for name, value in read_checkpoint(a)["model"].items():
        assert torch.equal(payload["model"][name], value), name


@pytest.mark.parametrize("change, message", [
    ({"overrides": ["model.hidden_size=16"]}, r"model config differs .*model\.hidden_size 16 vs 32"),
    ({"overrides": ["features.n_mels=40"]}, r"features config differs .*features\.n_mels 40 vs 80"),
    ({"tokenizer": CharTokenizer(["<blank>", " ", *"abc"])}, "tokenizer differs"),
])
def test_average_mismatch_names_the_file(tmp_path, change, message):
    a = make_checkpoint(tmp_path / "epoch1.pt", training_state=False)
    b = make_checkpoint(tmp_path / "epoch2.pt", training_state=False)
    odd = make_checkpoint(tmp_path / "odd.pt", training_state=False, **change)
    with pytest.raises(ValueError, match=f"^{tmp_path / 'odd.pt'}: {message}"):
        average_checkpoints([a, b, odd])


def test_weighted_average(tmp_path):
    a = make_checkpoint(tmp_path / "a.pt", seed=1, training_state=False)
    b = make_checkpoint(tmp_path / "b.pt", seed=2, training_state=False)
    payload = average_checkpoints([a, b], weights=[1, 3])
    first, second = read_checkpoint(a)["model"], read_checkpoint(b)["model"]
    for name, value in payload["model"].items():
        torch.testing.assert_close(value, 0.25 * first[name] + 0.75 * second[name], rtol=0, atol=1e-6)
    assert payload["metadata"]["weights"] == [0.25, 0.75]
    assert "weights" not in average_checkpoints([a, b])["metadata"]
    for weights, message in (([1], "1 weights for 2 checkpoints"), ([1, -1], "must be 0 or more"),
                             ([0, 0], "not all 0"), ([1, float("nan")], "must be 0 or more")):
        with pytest.raises(ValueError, match=message):
            average_checkpoints([a, b], weights=weights)


def test_average_needs_two_distinct_checkpoints(tmp_path):
    a = make_checkpoint(tmp_path / "a.pt", training_state=False)
    with pytest.raises(ValueError, match="at least two"):
        average_checkpoints([a])
    with pytest.raises(ValueError, match="a.pt: given twice"):
        average_checkpoints([a, tmp_path / "." / "a.pt"])


def test_expand_checkpoint_paths_natural_order(tmp_path):
    for n in (10, 2, 1):
        (tmp_path / f"epoch{n}.pt").write_bytes(b"")
    (tmp_path / "best.pt").write_bytes(b"")
    assert expand_checkpoint_paths([tmp_path / "epoch*.pt", tmp_path / "best.pt"]) == [
        tmp_path / "epoch1.pt", tmp_path / "epoch2.pt", tmp_path / "epoch10.pt", tmp_path / "best.pt"]
    with pytest.raises(FileNotFoundError, match=r"nothing\*\.pt: no checkpoint matches"):
        expand_checkpoint_paths([tmp_path / "nothing*.pt"])


def test_average_cli_with_glob(capsys, tmp_path):
    for n in (1, 2, 3):
        make_checkpoint(tmp_path / "exp" / f"epoch{n}.pt", seed=n, training_state=False)
    out = tmp_path / "avg.pt"
    code, stdout, _ = run(capsys, "average", tmp_path / "exp" / "epoch*.pt", "--out", out)
    assert code == 0
    assert "average of 3 checkpoints" in stdout
    weights = [read_checkpoint(tmp_path / "exp" / f"epoch{n}.pt")["model"]["output.weight"] for n in (1, 2, 3)]
    torch.testing.assert_close(read_checkpoint(out)["model"]["output.weight"], sum(weights) / 3, rtol=0, atol=1e-6)
    code, _, err = run(capsys, "average", tmp_path / "exp" / "epoch*.pt", "--out", tmp_path / "exp" / "epoch3.pt")
    assert code == 2 and "epoch3.pt: --out is one of the checkpoints" in err
    code, stdout, _ = run(capsys, "average", tmp_path / "exp" / "epoch*.pt", "--weights", "2", "1", "1", "--out", out)
    assert code == 0 and "weighted average of 3 checkpoints (0.5 x " in stdout
    torch.testing.assert_close(read_checkpoint(out)["model"]["output.weight"],
                               (2 * weights[0] + weights[1] + weights[2]) / 4, rtol=0, atol=1e-6)
    code, _, err = run(capsys, "average", tmp_path / "exp" / "epoch*.pt", "--weights", "1", "1", "--out", out)
    assert code == 2 and "2 weights for 3 checkpoints" in err
    code, _, err = run(capsys, "average", tmp_path / "none*.pt", "--out", out)
    assert code == 2 and "none*.pt: no checkpoint matches" in err


# --------------------------------------------------------------------------- the default model


@pytest.fixture
def no_default_model(monkeypatch, tmp_path):
    """Neither $ASR_MODEL nor a models/ folder: the package seems installed from an empty fake clone."""
    monkeypatch.delenv("ASR_MODEL", raising=False)
    fake_package = tmp_path / "clone" / "asr"
    fake_package.mkdir(parents=True)
    monkeypatch.setattr(asr.transcribe, "__file__", str(fake_package / "transcribe.py"))
    return tmp_path / "clone"


def test_default_model_from_env(monkeypatch, no_default_model, tmp_path):
    model = make_checkpoint(tmp_path / "mine.pt", training_state=False)
    monkeypatch.setenv("ASR_MODEL", str(model))
    assert default_model_path() == model
    monkeypatch.setenv("ASR_MODEL", str(tmp_path / "gone.pt"))
    with pytest.raises(FileNotFoundError, match=r"ASR_MODEL=.*gone\.pt: no such model file"):
        default_model_path()


def test_default_model_in_repository(no_default_model):
    shipped = no_default_model / "models" / DEFAULT_MODEL
    make_checkpoint(shipped, training_state=False)
    assert default_model_path() == shipped
    assert DEFAULT_MODEL == "en-whisper-tiny-bilstm-ctc.pt"


def test_default_model_missing_says_where_it_looked(no_default_model):
    with pytest.raises(FileNotFoundError) as e:
        default_model_path()
    message = str(e.value)
    assert "ASR_MODEL is not set" in message
    assert str(no_default_model / "models" / DEFAULT_MODEL) in message
    assert "--model" in message and "recipes/librispeech/run.sh" in message


@pytest.fixture
def wav(tmp_path) -> Path:
    path = tmp_path / "speech.wav"
    soundfile.write(path, synth_utterance("a bad cab"), 16000)
    return path


def test_transcribe_cli_model_forms(capsys, monkeypatch, no_default_model, source, wav, tmp_path):
    code, explicit, _ = run(capsys, "transcribe", "--model", source, wav, "--device", "cpu")
    assert code == 0 and explicit.startswith(f"{wav}\t")
    assert run(capsys, "transcribe", "-m", source, wav, "--device", "cpu")[1] == explicit
    assert run(capsys, "transcribe", source, wav, "--device", "cpu")[1] == explicit  # MODEL AUDIO... still works
    assert run(capsys, "transcribe", source, "--device", "cpu", wav)[1] == explicit  # audio after the options
    assert run(capsys, "transcribe", "-m", source, wav, "--device", "cpu", wav)[1] == explicit * 2
    with pytest.raises(SystemExit):
        main(["transcribe", "-m", str(source), str(wav), "--no-such-option"])
    monkeypatch.setenv("ASR_MODEL", str(source))
    code, out, err = run(capsys, "transcribe", wav, "--device", "cpu")
    assert (code, out) == (0, explicit)
    assert f"model {source}" in err
    monkeypatch.delenv("ASR_MODEL")
    make_checkpoint(no_default_model / "models" / DEFAULT_MODEL, training_state=False)
    assert run(capsys, "transcribe", wav, "--device", "cpu")[:2] == (0, explicit)  # same seed: same model


def test_transcribe_cli_model_errors(capsys, no_default_model, source, wav):
    code, out, err = run(capsys, "transcribe", wav, "--device", "cpu")
    assert (code, out) == (2, "")
    assert "no default model found" in err and str(no_default_model / "models") in err
    code, _, err = run(capsys, "transcribe", "-m", source, source, wav)
    assert code == 2 and "two models given" in err
    code, _, err = run(capsys, "transcribe", source)
    assert code == 2 and "no audio files given after the model" in err


def test_transcribe_with_exported_model(capsys, source, wav, tmp_path):
    out = tmp_path / "model.pt"
    export_model(source, out)
    _, original, _ = run(capsys, "transcribe", source, wav, "--device", "cpu")
    _, exported, _ = run(capsys, "transcribe", "-m", out, wav, "--device", "cpu")
    assert exported == original


@pytest.mark.parametrize("argv, expected", [
    (["export", "model"], ["--max-mb", "--dtype", "--note", "float16"]),
    (["average"], ["--out", "epoch*.pt"]),
    (["transcribe"], ["-m MODEL", "ASR_MODEL", "en-whisper-tiny-bilstm-ctc.pt", "AUDIO"]),
    (["decode"], ["asr export model"]),
])
def test_help_texts(capsys, argv, expected):
    with pytest.raises(SystemExit) as e:
        main(argv + ["--help"])
    assert e.value.code == 0
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    for item in expected:
        assert item in text, item

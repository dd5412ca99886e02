"""Training loop: checkpoint contents, exact resume, skipped non-finite batches, LR schedule, plots."""

from __future__ import annotations

import json

import pytest
import torch

import asr.train as train_module
from asr.checkpoint import load_model, read_checkpoint
from asr.config import load_config
from asr.data import read_manifest
from asr.train import _lr_lambda, plot_training, train
from synth import write_synth_corpus

torch.set_num_threads(1)

OVERRIDES = [
    "model.subsampling=stack", "model.subsampling_factor=2", "model.hidden_size=32", "model.num_layers=2",
    "model.dropout=0.2", "features.n_mels=24", "specaug.freq_masks=1", "specaug.freq_width=4",
    "specaug.time_masks=1", "train.epochs=3", "train.max_batch_seconds=4", "train.lr=3e-3",
    "train.warmup_steps=3", "train.num_workers=0", "train.log_every=2", "train.device=cpu",
]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return read_manifest(write_synth_corpus(tmp_path_factory.mktemp("synth")))


def _weights(path):
    return read_checkpoint(path)["model"]


def test_checkpoint_holds_everything_needed(corpus, tmp_path):
    config = load_config(None, OVERRIDES + ["train.epochs=1"])
    train(config, corpus, corpus[:3], tmp_path)
    payload = read_checkpoint(tmp_path / "last.pt")
    for key in ("config", "tokenizer", "model", "optimizer", "scheduler", "state", "rng"):
        assert key in payload, key
    assert payload["config"]["model"]["hidden_size"] == 32
    assert payload["tokenizer"]["symbols"][0] == "<blank>"
    # Feature normalization was estimated on the training set and travels in the weights.
    assert not torch.allclose(payload["model"]["normalizer.mean"], torch.zeros(24))
    assert payload["state"]["epoch"] == 1 and payload["state"]["batch_in_epoch"] == 0
    assert (tmp_path / "best.pt").is_file() and (tmp_path / "config.yaml").is_file()
    model, tokenizer, cfg = load_model(tmp_path / "best.pt")
    assert cfg.model.hidden_size == 32 and len(tokenizer) == 29 and not model.training


def test_resume_mid_epoch_gives_bitwise_identical_weights(corpus, tmp_path):
    config = load_config(None, OVERRIDES)
    full = train(config, corpus, corpus[:3], tmp_path / "full")

    # Stop in the middle of epoch 2, then resume to the end.
    stopped = train(load_config(None, OVERRIDES + ["train.max_steps=6"]), corpus, corpus[:3], tmp_path / "cut")
    assert stopped.step == 6 and stopped.epoch == 1 and stopped.batch_in_epoch > 0
    resumed = train(config, corpus, corpus[:3], tmp_path / "cut", resume=True)

    assert resumed.step == full.step
    a, b = _weights(tmp_path / "full" / "last.pt"), _weights(tmp_path / "cut" / "last.pt")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_non_finite_loss_is_skipped_not_applied(corpus, tmp_path, monkeypatch):
    real_loss = train_module._ctc_loss
    calls = {"n": 0}

    def loss_with_a_nan(*args, **kwargs):
        loss = real_loss(*args, **kwargs)
        if kwargs.get("reduction", "mean") == "mean":
            calls["n"] += 1
            if calls["n"] == 2:
                return loss * float("nan")
        return loss

    monkeypatch.setattr(train_module, "_ctc_loss", loss_with_a_nan)
    state = train(load_config(None, OVERRIDES + ["train.epochs=1"]), corpus, corpus[:3], tmp_path)
    assert state.skipped_batches == 1
    assert state.step == state.batch_in_epoch - 1 or state.step == calls["n"] - 1
    for value in _weights(tmp_path / "last.pt").values():
        if value.is_floating_point():
            assert torch.isfinite(value).all()


def test_lr_schedule_warms_up_then_decays_to_final_ratio():
    factor = _lr_lambda(warmup=10, total=110, final_ratio=0.1)
    assert factor(0) == pytest.approx(0.1)
    assert factor(9) == pytest.approx(1.0)
    assert factor(10) == pytest.approx(1.0)
    assert factor(60) == pytest.approx(0.55)
    assert factor(110) == pytest.approx(0.1)
    assert factor(500) == pytest.approx(0.1)
    values = [factor(s) for s in range(10, 111)]
    assert all(a >= b for a, b in zip(values, values[1:]))


def test_metrics_log_and_plot(corpus, tmp_path):
    train(load_config(None, OVERRIDES + ["train.epochs=2"]), corpus, corpus[:3], tmp_path)
    records = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    train_rows = [r for r in records if r["type"] == "train"]
    valid_rows = [r for r in records if r["type"] == "valid"]
    assert len(valid_rows) == 2 and train_rows
    assert {"loss", "lr", "grad_norm", "clipped", "audio_hours_per_hour"} <= train_rows[0].keys()
    assert {"loss", "wer", "cer"} <= valid_rows[0].keys()
    assert "validation after" in (tmp_path / "train.log").read_text()
    png = plot_training(tmp_path)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

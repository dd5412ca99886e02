"""Training loop: checkpoint contents, exact resume, skipped non-finite batches (host- and
device-side), LR schedule, metrics and plots, weight averaging (EMA), epoch checkpoints."""

from __future__ import annotations

import json

import matplotlib.figure
import pytest
import soundfile
import torch

from asr.checkpoint import load_model, read_checkpoint
from asr.config import load_config
from asr.data import read_manifest
from asr.training import TRACE_ENV, plot_training, step, train
from asr.training.loop import warmup_cosine
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


@pytest.mark.parametrize("ema", ["0.0", "0.9"])
def test_resume_mid_epoch_gives_bitwise_identical_weights(corpus, tmp_path, ema):
    overrides = OVERRIDES + [f"train.ema_decay={ema}"]
    config = load_config(None, overrides)
    full = train(config, corpus, corpus[:3], tmp_path / "full")

    # Stop in the middle of epoch 2, then resume to the end.
    stopped = train(load_config(None, overrides + ["train.max_steps=6"]), corpus, corpus[:3], tmp_path / "cut")
    assert stopped.step == 6 and stopped.epoch == 1 and stopped.batch_in_epoch > 0
    resumed = train(config, corpus, corpus[:3], tmp_path / "cut", resume=True)

    assert resumed.step == full.step and resumed.clipped_total == full.clipped_total
    a, b = read_checkpoint(tmp_path / "full" / "last.pt"), read_checkpoint(tmp_path / "cut" / "last.pt")
    assert ("ema" in a) == (ema != "0.0")
    for entry in ("model", "ema") if "ema" in a else ("model",):
        assert a[entry].keys() == b[entry].keys()
        for key in a[entry]:
            assert torch.equal(a[entry][key], b[entry][key]), (entry, key)


def _nan_at_second_training_loss(monkeypatch) -> dict:
    """Make the second training batch's loss NaN; returns the counter of training losses computed."""
    real_loss = step.ctc_loss
    calls = {"n": 0}

    def loss_with_a_nan(*args, **kwargs):
        loss = real_loss(*args, **kwargs)
        if kwargs.get("reduction", "mean") == "mean":
            calls["n"] += 1
            if calls["n"] == 2:
                return loss * float("nan")
        return loss

    monkeypatch.setattr(step, "ctc_loss", loss_with_a_nan)
    return calls


def test_non_finite_loss_is_skipped_not_applied(corpus, tmp_path, monkeypatch):
    calls = _nan_at_second_training_loss(monkeypatch)
    state = train(load_config(None, OVERRIDES + ["train.epochs=1"]), corpus, corpus[:3], tmp_path)
    assert state.skipped_batches == 1
    assert state.step == state.batch_in_epoch - 1 or state.step == calls["n"] - 1
    for value in _weights(tmp_path / "last.pt").values():
        if value.is_floating_point():
            assert torch.isfinite(value).all()


class FusedAdamW(torch.optim.AdamW):
    """AdamW as on CUDA (fused), here on the CPU: the loop then takes the device-side skip path."""

    def __init__(self, *args, **kwargs):
        kwargs["fused"] = True
        super().__init__(*args, **kwargs)


def test_non_finite_loss_is_skipped_on_the_device_with_fused_adamw(corpus, tmp_path, monkeypatch):
    calls = _nan_at_second_training_loss(monkeypatch)
    monkeypatch.setattr(torch.optim, "AdamW", FusedAdamW)
    state = train(load_config(None, OVERRIDES + ["train.epochs=1", "train.log_every=1", "train.ema_decay=0.5"]),
                  corpus, corpus[:3], tmp_path)
    # The optimizer step ran for every batch but applied nothing for the NaN one: its step counter
    # says one update fewer, and nothing non-finite reached the weights or their average.
    assert state.skipped_batches == 1 and state.step == calls["n"] > 2 and state.epoch == 1
    payload = read_checkpoint(tmp_path / "last.pt")
    assert payload["state"]["skipped_batches"] == 1
    steps = {float(s["step"]) for s in payload["optimizer"]["state"].values()}
    assert steps == {state.step - 1.0}
    for entry in ("model", "ema"):
        for value in payload[entry].values():
            if value.is_floating_point():
                assert torch.isfinite(value).all()
    rows = [json.loads(line) for line in open(tmp_path / "metrics.jsonl") if '"train"' in line]
    assert [r["skipped_batches"] for r in rows][:3] == [0, 1, 1]
    assert rows[1]["step"] == 2 and rows[1]["loss"] != rows[1]["loss"]  # NaN: no update in that window
    assert all(r["loss"] == r["loss"] for r in rows[2:])


def test_lr_schedule_warms_up_then_decays_to_final_ratio():
    factor = warmup_cosine(warmup=10, total=110, final_ratio=0.1)
    assert factor(0) == pytest.approx(0.1)
    assert factor(9) == pytest.approx(1.0)
    assert factor(10) == pytest.approx(1.0)
    assert factor(60) == pytest.approx(0.55)
    assert factor(110) == pytest.approx(0.1)
    assert factor(500) == pytest.approx(0.1)
    values = [factor(s) for s in range(10, 111)]
    assert all(a >= b for a, b in zip(values, values[1:]))


def test_metrics_log_and_plot(corpus, tmp_path, monkeypatch):
    monkeypatch.setenv(TRACE_ENV, str(tmp_path / "trace"))  # the batches each update trained on
    state = train(load_config(None, OVERRIDES + ["train.epochs=2"]), corpus, corpus[:3], tmp_path / "exp")
    records = [json.loads(line) for line in open(tmp_path / "exp" / "metrics.jsonl")]
    train_rows = [r for r in records if r["type"] == "train"]
    valid_rows = [r for r in records if r["type"] == "valid"]
    assert len(valid_rows) == 2 and len(train_rows) >= 3
    assert {"loss", "lr", "grad_norm", "clipped", "audio_hours_per_hour", "data_wait_share", "padding_fraction",
            "peak_memory_mb", "clipped_total", "grad_norms"} <= train_rows[0].keys()
    assert {"loss", "wer", "cer"} <= valid_rows[0].keys()
    assert "validation after" in (tmp_path / "exp" / "train.log").read_text()

    for r in train_rows:
        assert 0.0 <= r["data_wait_share"] < 1.0 and r["peak_memory_mb"] > 10
        assert list(r["grad_norms"]) == ["subsampler", "rnn.0", "rnn.1", "output"]
        assert all(value > 0 for value in r["grad_norms"].values())
    totals = [r["clipped_total"] for r in train_rows]
    assert totals == sorted(totals) and totals[0] == train_rows[0]["clipped"]
    assert state.clipped_total >= totals[-1] and state.clipped_total <= state.step
    # The first window's padding, from the two batches it trained on and the files' lengths.
    batches = [json.loads(line)["indices"] for line in open(tmp_path / "trace" / "rank0.batches.jsonl")][:2]
    lengths = [[soundfile.info(corpus[i].audio).frames for i in b] for b in batches]
    padded = sum(len(b) * max(b) for b in lengths)
    assert train_rows[0]["padding_fraction"] == pytest.approx(1 - sum(map(sum, lengths)) / padded)
    assert 0 < train_rows[0]["padding_fraction"] < 0.5

    figures = []
    real_savefig = matplotlib.figure.Figure.savefig
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", lambda fig, *a, **k: (figures.append(fig),
                                                                                     real_savefig(fig, *a, **k)))
    png = plot_training(tmp_path / "exp")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    per_layer = figures[0].axes[2]
    assert per_layer.get_yscale() == "log" and "per layer" in per_layer.get_title()
    assert [line.get_label() for line in per_layer.get_lines()] == ["subsampler", "rnn.0", "rnn.1", "output"]
    assert list(per_layer.get_lines()[3].get_ydata()) == [r["grad_norms"]["output"] for r in train_rows]


def test_ema_weights_are_the_running_average_and_go_to_best_pt(corpus, tmp_path, monkeypatch):
    decay = 0.7
    after_each_step = []
    real_step = torch.optim.AdamW.step

    def recording_step(self, *args, **kwargs):
        if not after_each_step:  # the weights before the first update start the average
            after_each_step.append([p.detach().clone() for p in self.param_groups[0]["params"]])
        result = real_step(self, *args, **kwargs)
        after_each_step.append([p.detach().clone() for p in self.param_groups[0]["params"]])
        return result

    monkeypatch.setattr(torch.optim.AdamW, "step", recording_step)
    state = train(load_config(None, OVERRIDES + ["train.epochs=1", f"train.ema_decay={decay}"]),
                  corpus, corpus[:3], tmp_path)
    assert state.step == len(after_each_step) - 1 >= 3
    expected = [p.double() for p in after_each_step[0]]
    for params in after_each_step[1:]:
        expected = [decay * e + (1 - decay) * p.double() for e, p in zip(expected, params)]

    last = read_checkpoint(tmp_path / "last.pt")
    model, _, _ = load_model(tmp_path / "best.pt")
    names = [name for name, _ in model.named_parameters()]
    for name, want, raw in zip(names, expected, after_each_step[-1]):
        torch.testing.assert_close(last["ema"][name].double(), want, rtol=0, atol=1e-6, msg=name)
        assert torch.equal(last["model"][name], raw), name  # last.pt keeps the raw weights for resuming
        assert not torch.equal(last["ema"][name], raw), name
        assert torch.equal(model.state_dict()[name], last["ema"][name]), name  # best.pt decodes with the average
    assert torch.equal(last["ema"]["normalizer.mean"], last["model"]["normalizer.mean"])
    assert "optimizer" not in read_checkpoint(tmp_path / "best.pt")


def test_epoch_checkpoints_keep_the_last_n(corpus, tmp_path):
    config = load_config(None, OVERRIDES + ["train.epochs=3", "train.max_batch_seconds=8",
                                            "train.keep_epoch_checkpoints=2"])
    train(config, corpus, corpus[:3], tmp_path)
    assert sorted(p.name for p in tmp_path.glob("epoch*.pt")) == ["epoch2.pt", "epoch3.pt"]
    epoch3 = read_checkpoint(tmp_path / "epoch3.pt")
    assert "optimizer" not in epoch3 and epoch3["state"]["epoch"] == 3
    final = _weights(tmp_path / "last.pt")
    for key, value in epoch3["model"].items():
        assert torch.equal(value, final[key]), key
    assert not torch.equal(read_checkpoint(tmp_path / "epoch2.pt")["model"]["output.weight"], final["output.weight"])
    model, tokenizer, _ = load_model(tmp_path / "epoch2.pt")
    assert len(tokenizer) == 29 and not model.training


@pytest.mark.parametrize("option, message", [("train.ema_decay=1.0", "train.ema_decay must be in [0, 1)"),
                                             ("train.keep_epoch_checkpoints=-1", "train.keep_epoch_checkpoints"),
                                             ("train.loss_norm=frame", "train.loss_norm must be one of utterance, token")])
def test_bad_new_options_are_named(corpus, tmp_path, option, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace(")", r"\)")):
        train(load_config(None, OVERRIDES + [option]), corpus, corpus[:3], tmp_path)


def test_per_token_loss_divides_each_utterance_by_its_transcript_length():
    torch.manual_seed(0)
    log_probs = torch.randn(3, 20, 6).log_softmax(-1)
    labels = torch.tensor([[1, 2, 3, 4], [2, 0, 0, 0], [5, 1, 0, 0]])
    label_lengths, out_lengths = torch.tensor([4, 1, 2]), torch.tensor([20, 15, 18])
    per_utt = torch.stack([step.ctc_loss(log_probs[i:i + 1, :n], out_lengths[i:i + 1], labels[i:i + 1],
                                                  label_lengths[i:i + 1], 0) for i, n in enumerate(out_lengths)])
    assert torch.allclose(step.ctc_loss(log_probs, out_lengths, labels, label_lengths, 0), per_utt.mean())
    assert torch.allclose(step.ctc_loss(log_probs, out_lengths, labels, label_lengths, 0, per_token=True),
                          (per_utt / label_lengths).mean())


def test_a_cpu_time_budget_stops_the_run_and_is_kept_across_resume(corpus, tmp_path):
    config = load_config(None, OVERRIDES + ["train.max_cpu_minutes=0.0001"])
    state = train(config, corpus, corpus[:3], tmp_path)
    assert state.step == 1 and state.cpu_seconds >= 0.006  # stops after the first update past the budget
    log = (tmp_path / "train.log").read_text()
    assert "max_cpu_minutes=0.0001 reached" in log
    resumed = train(config, corpus, corpus[:3], tmp_path, resume=True)  # the budget is spent: one more step
    assert resumed.step == 2 and resumed.cpu_seconds > state.cpu_seconds


# --------------------------------------------------------------------------- the resume guard


@pytest.fixture(scope="module")
def stopped_run(corpus, tmp_path_factory):
    """(manifest, run folder stopped after 2 updates of the OVERRIDES config) through `asr train`."""
    from asr.data import write_manifest

    folder = tmp_path_factory.mktemp("guard")
    manifest = folder / "train.jsonl"
    write_manifest(manifest, corpus)
    assert _asr_train(manifest, folder / "run", "train.max_steps=2")[0] == 0
    return manifest, folder / "run"


def _asr_train(manifest, out, *argv) -> tuple[int, str]:
    """`asr train` as a user calls it: (exit code, stderr)."""
    import contextlib
    import io

    from asr.cli import main

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = main(["train", "--train", str(manifest), "--dev", str(manifest), "--out", str(out),
                     *[a for a in argv if a.startswith("--")], *OVERRIDES, *[a for a in argv if not a.startswith("--")]])
    return code, err.getvalue()


def _copy_run(run, tmp_path):
    import shutil

    return shutil.copytree(run, tmp_path / "run")


def test_resume_with_a_changed_setting_stops_naming_it(stopped_run, tmp_path):
    manifest, run = stopped_run
    run = _copy_run(run, tmp_path)
    before = (run / "last.pt").read_bytes()
    code, err = _asr_train(manifest, run, "--resume", "train.lr=1e-3", "specaug.freq_masks=2")
    assert code == 2
    assert f"asr train: error: {run}: the config differs from the one {run / 'last.pt'} was trained with: " \
           "specaug.freq_masks 1 -> 2, train.lr 0.003 -> 0.001." in err
    assert "--exp-name" in err and "--force-resume" in err and "train.max_minutes" in err
    assert (run / "last.pt").read_bytes() == before  # nothing trained, nothing written


def test_resume_accepts_the_keys_safe_to_change(stopped_run, tmp_path):
    manifest, run = stopped_run
    run = _copy_run(run, tmp_path)
    code, err = _asr_train(manifest, run, "--resume", "train.max_steps=3", "train.epochs=4", "train.log_every=1",
                           "train.max_minutes=30", "decode.beam_size=4")
    assert code == 0, err
    payload = read_checkpoint(run / "last.pt")
    assert payload["state"]["step"] == 3 and payload["config"]["train"]["epochs"] == 4
    # Fewer epochs than planned is no extension: it changes the schedule, so it is refused.
    code, err = _asr_train(manifest, run, "--resume", "train.max_steps=4", "train.epochs=2")
    assert code == 2 and "train.epochs 4 -> 2" in err


def test_force_resume_continues_with_the_new_values(stopped_run, tmp_path):
    manifest, run = stopped_run
    run = _copy_run(run, tmp_path)
    code, err = _asr_train(manifest, run, "--force-resume", "train.lr=1e-3", "train.weight_decay=0.1",
                           "train.max_steps=3")
    assert code == 0, err
    payload = read_checkpoint(run / "last.pt")
    assert payload["state"]["step"] == 3 and payload["config"]["train"]["lr"] == 1e-3
    # The new values are the ones in force, not those the optimizer and scheduler states were saved with.
    assert payload["scheduler"]["base_lrs"] == [1e-3]
    [group] = payload["optimizer"]["param_groups"]
    assert group["initial_lr"] == 1e-3 and group["weight_decay"] == 0.1
    assert group["lr"] == 1e-3 * warmup_cosine(3, 12, 0.05)(3)  # warm-up 3 of 12 updates (OVERRIDES), after 3
    assert "resuming" in (run / "train.log").read_text() and "train.lr 0.003 -> 0.001" in (run / "train.log").read_text()


@pytest.mark.parametrize("force", [False, True])
def test_resume_with_another_model_is_one_sentence_not_a_size_mismatch_wall(stopped_run, tmp_path, force):
    manifest, run = stopped_run
    run = _copy_run(run, tmp_path)
    code, err = _asr_train(manifest, run, "--force-resume" if force else "--resume", "model.hidden_size=24")
    assert code == 2
    assert f"asr train: error: {run}: cannot resume: model.hidden_size 32 -> 24 changes the model itself" in err
    assert "--exp-name" in err and "size mismatch" not in err and err.count("\n") == 1


def test_init_from_starts_a_new_run_from_trained_weights_and_normalizer(corpus, tmp_path):
    train(load_config(None, OVERRIDES + ["train.epochs=1"]), corpus, corpus[:3], tmp_path / "first")
    trained = _weights(tmp_path / "first" / "last.pt")
    # Learning rate 0: the fine-tuning run's weights stay those it started from, normalizer included
    # (not re-estimated on its own training set, here a different one).
    state = train(load_config(None, OVERRIDES + ["train.epochs=1", "train.lr=0", "train.max_steps=2",
                                                 f"train.init_from={tmp_path / 'first' / 'last.pt'}"]),
                  corpus[:6], corpus[:3], tmp_path / "tuned")
    assert state.step == 2  # a new run: fresh step count, optimizer and schedule
    tuned = _weights(tmp_path / "tuned" / "last.pt")
    assert tuned.keys() == trained.keys()
    for key in trained:
        assert torch.equal(tuned[key], trained[key]), key
    assert read_checkpoint(tmp_path / "tuned" / "last.pt")["config"]["train"]["init_from"].endswith("last.pt")


def test_init_from_a_checkpoint_of_another_model_is_refused_naming_it(corpus, tmp_path):
    train(load_config(None, OVERRIDES + ["train.epochs=1", "train.max_steps=1"]), corpus, corpus[:3], tmp_path / "a")
    source = tmp_path / "a" / "last.pt"
    with pytest.raises(ValueError, match=rf"{source}: cannot fine-tune from it \(train.init_from\): this run's "
                                         r"model.hidden_size 32 -> 16"):
        train(load_config(None, OVERRIDES + ["model.hidden_size=16", f"train.init_from={source}"]),
              corpus, corpus[:3], tmp_path / "b")


# --------------------------------------------------------------------------- a folder holding a run

def test_training_again_into_a_finished_run_is_refused_before_any_work(stopped_run, tmp_path, monkeypatch):
    """Issue 29 row 3: without --resume or --overwrite, best.pt, last.pt and metrics.jsonl of the run
    stay byte for byte, and no manifest is even read (an unreadable one would be named otherwise)."""
    manifest, run = stopped_run
    run = _copy_run(run, tmp_path)
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    code, err = _asr_train(tmp_path / "no-such-manifest.jsonl", run)
    assert code == 2
    assert f"asr train: error: {run}: already holds a training run (last.pt, best.pt, metrics.jsonl)" in err
    assert "--resume" in err and "--overwrite" in err and "--out" in err
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before
    with pytest.raises(ValueError, match="already holds a training run"):  # the Python API refuses it too
        train(load_config(None, OVERRIDES), read_manifest(manifest), read_manifest(manifest)[:3], run)
    code, err = _asr_train(manifest, run, "--resume", "--overwrite")
    assert code == 2 and "--resume and --overwrite exclude each other" in err


def test_overwrite_starts_the_run_again_from_scratch(stopped_run, tmp_path):
    manifest, run = stopped_run
    run = _copy_run(run, tmp_path)
    (run / "notes.txt").write_text("mine")
    code, err = _asr_train(manifest, run, "--overwrite", "train.max_steps=1", "train.log_every=1")
    assert code == 0, err
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps and max(steps) == 1  # only the new run's records: none of the old run's 2 updates
    assert read_checkpoint(run / "last.pt")["state"]["step"] == 1
    assert "--overwrite: deleted the earlier run's last.pt, best.pt, metrics.jsonl" in (run / "train.log").read_text()
    assert (run / "notes.txt").read_text() == "mine"  # only the run's own files go


def test_a_folder_left_by_a_failed_setup_is_no_run(corpus, tmp_path):
    """A bad option stops the run during setup; its train.log must not force --overwrite next time."""
    with pytest.raises(ValueError, match="train.ema_decay"):
        train(load_config(None, OVERRIDES + ["train.ema_decay=1.0"]), corpus, corpus[:3], tmp_path)
    assert (tmp_path / "train.log").exists()
    state = train(load_config(None, OVERRIDES + ["train.max_steps=1"]), corpus, corpus[:3], tmp_path)
    assert state.step == 1

"""End to end: train, then decode and score. One on generated audio (always runs), one on the real
Free Spoken Digit Dataset from ../shared/data (skipped when absent)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from asr.checkpoint import load_model
from asr.cli import main as asr_main
from asr.config import load_config
from asr.data import read_manifest
from asr.transcribe import transcribe_waves
from asr.data import load_utterance_audio
from asr.score import read_texts, score
from asr.training import train
from synth import write_synth_corpus

ROOT = Path(__file__).resolve().parents[1]
FSDD = ROOT.parent / "shared" / "data" / "fsdd"

SYNTH_OVERRIDES = [
    "model.subsampling=stack", "model.subsampling_factor=2", "model.hidden_size=96", "model.num_layers=2",
    "model.dropout=0.0", "specaug.freq_masks=0", "specaug.time_masks=0", "features.n_mels=40",
    "train.epochs=80", "train.max_batch_seconds=4", "train.lr=5e-3", "train.warmup_steps=10",
    "train.num_workers=0", "train.log_every=10", "train.device=cpu",
]


def test_generated_audio_loss_falls_and_greedy_recovers_transcripts(tmp_path):
    """80 epochs on 8 generated sentences: the loss falls below a fifth and every transcript is exact.

    Why it holds on any CPU: the weights follow the run's random path, which the CPU vendor and the
    thread count change; a different train.seed changes it far more (other initial weights and batch
    order), so it was measured on 4 seeds (0-3, one thread; AMD EPYC, 2026-11-29): each run reached
    0% WER by epoch 18-22 of 80 and stayed there for 59-62 epochs, its final loss was 0.02-0.03% of
    the first, and on every frame of its best model the best label led the next by at least 0.009
    in log-prob, far above float rounding (1e-6)."""
    manifest = write_synth_corpus(tmp_path / "corpus")
    utts = read_manifest(manifest)
    config = load_config(None, SYNTH_OVERRIDES)
    state = train(config, utts, utts, tmp_path / "exp")

    records = [json.loads(line) for line in open(tmp_path / "exp" / "metrics.jsonl")]
    losses = [r["loss"] for r in records if r["type"] == "train"]
    assert losses[-1] < 0.2 * losses[0], losses
    assert state.best_wer == 0.0

    model, tokenizer, _ = load_model(tmp_path / "exp" / "best.pt")
    waves = [load_utterance_audio(u, config.features.sample_rate) for u in utts]
    hyps = transcribe_waves(model, tokenizer, waves, model.normalizer.mean.device)
    assert hyps == [u.text for u in utts]

    # The same through the command line: decode writes hypotheses, score reads them back.
    hyp_path = tmp_path / "hyp.txt"
    assert asr_main(["decode", str(tmp_path / "exp" / "best.pt"), str(manifest), "--out", str(hyp_path)]) == 0
    assert read_texts(hyp_path) == {u.id: u.text for u in utts}
    assert asr_main(["score", str(manifest), str(hyp_path), "--out", str(tmp_path / "wer.txt")]) == 0
    assert "%WER 0.00 [ 0 / " in (tmp_path / "wer.txt").read_text()


@pytest.mark.slow
@pytest.mark.skipif(not (FSDD / "recordings").is_dir(), reason="../shared/data/fsdd not present")
def test_fsdd_trains_below_20_percent_wer(tmp_path):
    from asr.corpora.fsdd import prepare_fsdd

    train_utts = prepare_fsdd(FSDD, "train").kept
    test_utts = prepare_fsdd(FSDD, "test").kept
    assert len(train_utts) == 2700 and len(test_utts) == 300
    config = load_config(ROOT / "conf" / "fsdd.yaml", ["train.device=cpu"])
    train(config, train_utts, test_utts, tmp_path / "exp")

    model, tokenizer, _ = load_model(tmp_path / "exp" / "best.pt")
    waves = [load_utterance_audio(u, config.features.sample_rate) for u in test_utts]
    hyps = transcribe_waves(model, tokenizer, waves, model.normalizer.mean.device)
    report = score({u.id: u.text for u in test_utts}, {u.id: h for u, h in zip(test_utts, hyps)})
    assert report.words.utterances == 300
    assert report.wer < 20.0, f"FSDD test WER {report.wer:.2f}%"

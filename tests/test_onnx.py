"""asr export onnx and asr.onnx_runtime: the graph gives torch's log-probs (within 1e-4) for batches
with padding and lengths other than the export example's, for LSTM/GRU and conv/stack subsampling;
numpy features equal LogMel's; the runtime transcribes the synthetic corpus exactly, without
importing torch."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

torch.set_num_threads(1)
pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from asr.checkpoint import load_model, save_checkpoint  # noqa: E402
from asr.cli import main as asr_main  # noqa: E402
from asr.config import load_config  # noqa: E402
from asr.data import read_manifest  # noqa: E402
from asr.features import FeatureConfig, LogMel  # noqa: E402
from asr.model import CTCModel  # noqa: E402
from asr.onnx_export import export_onnx  # noqa: E402
from asr.onnx_runtime import OnnxRecognizer, hann_window, log_mel, mel_filterbank  # noqa: E402
from asr.text import CharTokenizer  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TOLERANCE = 1e-4  # largest |log-prob| difference allowed; measured ~2e-5 (benchmarks/RESULTS.md)


def random_checkpoint(path: Path, overrides: list[str]) -> Path:
    config = load_config(None, overrides)
    tokenizer = CharTokenizer()
    torch.manual_seed(0)
    model = CTCModel(config.features, config.model, len(tokenizer))
    with torch.no_grad():
        n = config.features.n_mels
        model.normalizer.set_stats(torch.linspace(-9.0, -4.0, n), torch.linspace(2.0, 3.0, n))
        model.output.weight.mul_(4)
    save_checkpoint(path, {"config": config.to_dict(), "tokenizer": tokenizer.to_dict(), "model": model.state_dict()})
    return path


def waves(seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [(0.1 * rng.standard_normal(n)).astype(np.float32) for n in (16000, 9000, 3217)]


def torch_log_probs(model: CTCModel, batch: list[np.ndarray]) -> list[np.ndarray]:
    lengths = torch.tensor([w.shape[0] for w in batch])
    padded = torch.nn.utils.rnn.pad_sequence([torch.from_numpy(w) for w in batch], batch_first=True)
    with torch.inference_mode():
        lp, n = model(padded, lengths)
    return [lp[i, : int(n[i])].numpy() for i in range(len(batch))]


@pytest.mark.parametrize("overrides", [
    ["model.subsampling=conv", "model.hidden_size=48", "model.num_layers=2"],
    ["model.subsampling=stack", "model.subsampling_factor=3", "model.rnn_type=gru", "model.hidden_size=32",
     "model.num_layers=1", "model.bidirectional=false", "features.n_mels=40"],
], ids=["conv-bilstm", "stack-gru"])
def test_onnx_log_probs_match_torch_for_padded_batches(tmp_path, overrides):
    checkpoint = random_checkpoint(tmp_path / "model.pt", overrides)
    metadata = export_onnx(checkpoint, tmp_path / "model.onnx")
    assert metadata["features"]["n_mels"] == load_config(None, overrides).features.n_mels
    model, _, _ = load_model(checkpoint)
    onnx = OnnxRecognizer(tmp_path / "model.onnx", threads=1)
    batch = waves()
    expected = torch_log_probs(model, batch)
    for single, together, reference in zip([onnx.log_probs([w])[0] for w in batch], onnx.log_probs(batch), expected):
        assert single.shape == reference.shape and together.shape == reference.shape
        assert np.abs(single - reference).max() < TOLERANCE
        assert np.abs(together - reference).max() < TOLERANCE


@pytest.mark.parametrize("samples", [16000, 16001, 12345, 401])
def test_numpy_features_equal_logmel(samples):
    config = FeatureConfig()
    wave = (0.2 * np.random.default_rng(samples).standard_normal(samples)).astype(np.float32)
    with torch.no_grad():
        reference, _ = LogMel(config)(torch.from_numpy(wave)[None], torch.tensor([samples]))
    ours = log_mel(wave, hann_window(config.n_fft), mel_filterbank(config.sample_rate, config.n_fft, config.n_mels),
                   config.n_fft, config.hop_length)
    assert ours.shape == reference.shape[1:]
    assert np.abs(ours - reference[0].numpy()).max() < 1e-3


def test_exported_model_transcribes_like_torch_without_importing_torch(synth_model, tmp_path, capsys):
    checkpoint, manifest = synth_model
    out = tmp_path / "synth.onnx"
    assert asr_main(["export", "onnx", str(checkpoint), "--out", str(out)]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    utts = read_manifest(manifest)
    code = ("import sys\nfrom asr.onnx_runtime import main\ncode = main(sys.argv[1:])\n"
            "assert 'torch' not in sys.modules, 'the ONNX runtime imported torch'\nsys.exit(code)")
    run = subprocess.run([sys.executable, "-c", code, str(out), "--threads", "1", *[u.audio for u in utts]],
                         capture_output=True, text=True, cwd=ROOT, timeout=300,
                         env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"})
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines() == [f"{u.audio}\t{u.text}" for u in utts]


def test_runtime_reports_bad_files_and_foreign_onnx(synth_model, tmp_path):
    checkpoint, _ = synth_model
    export_onnx(checkpoint, tmp_path / "m.onnx")
    bad = tmp_path / "bad.wav"
    bad.write_text("not audio")
    result = OnnxRecognizer(tmp_path / "m.onnx").transcribe_files([bad])[0]
    assert result.error.startswith(f"{bad}: not a readable audio file")
    import onnx

    graph = onnx.load(str(tmp_path / "m.onnx"))
    del graph.metadata_props[:]
    onnx.save(graph, str(tmp_path / "plain.onnx"))
    with pytest.raises(ValueError, match="no 'asr' metadata"):
        OnnxRecognizer(tmp_path / "plain.onnx")

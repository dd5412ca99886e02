"""asr export onnx and asr.serving.onnx_runtime: the graph gives
torch's log-probs (within 1e-4) for batches with padding and lengths other than the export example's,
for LSTM/GRU and conv/stack subsampling;
numpy features equal LogMel's; the runtime transcribes the synthetic corpus exactly, without
importing torch. For the frozen Whisper-encoder frontend: numpy's Whisper log-mel (which
the torch frontend calls too) equals torch.stft's, the graph gives torch's log-probs (within 1e-4, windows over 30 s included),
the runtime transcribes without torch and refuses another encoder. For the whisper-torch frontend
(the whole encoder in the graph): log-probs within 1e-4 for every layer choice, padded windows equal
windows alone, and the runtime needs neither torch nor CTranslate2. With --int8: quantized operators,
log-probs within 0.05."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import librosa
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
from asr.frontend import FeatureConfig  # noqa: E402
from asr.frontend.logmel import LogMel  # noqa: E402
from asr.model import CTCModel  # noqa: E402
from asr.serving.onnx_export import export_onnx  # noqa: E402
from asr.decode import greedy_ids  # noqa: E402
from asr.frontend.mel_filters import slaney_mel_filters  # noqa: E402
from asr.serving.onnx_runtime import OnnxRecognizer, hann_window, log_mel  # noqa: E402
from asr.text import CharTokenizer  # noqa: E402
from encoder_support import needs_encoder  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TOLERANCE = 1e-4  # largest |log-prob| difference allowed; measured ~2e-5 (benchmarks/RESULTS.md)


def random_checkpoint(path: Path, overrides: list[str]) -> Path:
    config = load_config(None, overrides)
    tokenizer = CharTokenizer()
    torch.manual_seed(0)
    model = CTCModel(config.features, config.model, len(tokenizer))
    with torch.no_grad():
        n = model.normalizer.mean.shape[0]
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
    ours = log_mel(wave, hann_window(config.n_fft), slaney_mel_filters(config.sample_rate, config.n_fft, config.n_mels),
                   config.n_fft, config.hop_length)
    assert ours.shape == reference.shape[1:]
    assert np.abs(ours - reference[0].numpy()).max() < 1e-3


def test_exported_model_transcribes_like_torch_without_importing_torch(synth_model, tmp_path, capsys):
    checkpoint, manifest = synth_model
    out = tmp_path / "synth.onnx"
    assert asr_main(["export", "onnx", str(checkpoint), "--out", str(out)]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    utts = read_manifest(manifest)
    code = ("import sys\nfrom asr.serving.onnx_runtime import main\ncode = main(sys.argv[1:])\n"
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


# --------------------------------------------------------------------------- the whisper frontend


WHISPER = ["features.frontend=whisper", "model.subsampling=stack", "model.subsampling_factor=2",
           "model.hidden_size=32", "model.num_layers=2"]
# The torch frontend and the runtime compute Whisper's log-mel with the same numpy function
# (asr.frontend.whisper_numpy.whisper_log_mel) and run the same int8 CTranslate2 encoder, so the graph gets the
# same features and the log-probs agree as for log-mel models (TOLERANCE; measured ~5e-7). With
# torch's own STFT the log-mel differed by ~4e-6, which int8 quantization in the encoder turned into
# feature differences of up to 0.19 and log-prob differences of up to 5.5e-3 on these random models.
WHISPER_TOLERANCE = TOLERANCE

def speechlike(seconds: float, seed: int = 0, sr: int = 16000) -> np.ndarray:
    """Amplitude-modulated harmonics with noise (as tests/test_pretrained.py): structure for the encoder."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sr)) / sr
    f0 = 120 + 30 * np.sin(2 * np.pi * 0.7 * t) + 10 * seed
    phase = 2 * np.pi * np.cumsum(f0) / sr
    wave = sum(np.sin(k * phase) / k for k in range(1, 8)) * (0.5 + 0.5 * np.sin(2 * np.pi * 3 * t))
    wave = 0.2 * wave / np.abs(wave).max() + 0.005 * rng.standard_normal(t.shape)
    return wave.astype(np.float32)


def torch_stft_whisper_log_mel(wave: torch.Tensor, n_mels: int = 80) -> torch.Tensor:
    """openai/whisper's log_mel_spectrogram with torch.stft (asr.frontend.whisper's before it shared numpy's)."""
    if wave.shape[0] <= 200:
        wave = torch.nn.functional.pad(wave, (0, 201 - wave.shape[0]))
    stft = torch.stft(wave, 400, 160, window=torch.hann_window(400), center=True, pad_mode="reflect",
                      return_complex=True)
    filters = torch.from_numpy(librosa.filters.mel(sr=16000, n_fft=400, n_mels=n_mels))
    log_spec = (filters @ stft[:, :-1].abs() ** 2).clamp_min(1e-10).log10()
    return (torch.maximum(log_spec, log_spec.max() - 8.0) + 4.0) / 4.0


@pytest.mark.parametrize("samples", [1, 200, 201, 16000, 16001, 16159, 48000 + 37])
def test_numpy_whisper_log_mel_equals_torch_stft_and_the_frontend(samples):
    from asr.frontend.whisper_numpy import whisper_log_mel
    from asr.frontend.whisper import whisper_log_mel as frontend_log_mel

    wave = speechlike(samples / 16000 + 0.01, seed=samples % 7)[:samples]
    with torch.no_grad():
        reference = torch_stft_whisper_log_mel(torch.from_numpy(wave)).numpy()
    ours = whisper_log_mel(wave)
    assert ours.shape == reference.shape == (80, max(samples, 201) // 160)
    assert np.abs(ours - reference).max() < 1e-4
    np.testing.assert_array_equal(frontend_log_mel(torch.from_numpy(wave)).numpy(), ours)  # one implementation


@pytest.fixture(scope="module")
def whisper_onnx(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("whisper")
    checkpoint = random_checkpoint(tmp / "model.pt", WHISPER)
    metadata = export_onnx(checkpoint, tmp / "model.onnx")
    return checkpoint, tmp / "model.onnx", metadata


@needs_encoder
def test_whisper_onnx_log_probs_match_torch(whisper_onnx):
    checkpoint, path, metadata = whisper_onnx
    model, _, config = load_model(checkpoint)
    assert metadata["frontend"] == "whisper" and metadata["encoder_id"] == config.features.encoder_id
    assert metadata["features"]["dim"] == model.frontend.dim == 384
    assert metadata["frame_shift"] == pytest.approx(model.frame_shift) == pytest.approx(0.04)
    onnx = OnnxRecognizer(path, threads=1)
    batch = [speechlike(s, seed=i) for i, s in enumerate((1.3, 4.0, 31.7))]  # the last one in 2 windows
    expected = torch_log_probs(model, batch)
    for single, together, reference in zip([onnx.log_probs([w])[0] for w in batch], onnx.log_probs(batch), expected):
        assert single.shape == reference.shape and together.shape == reference.shape
        assert np.abs(single - reference).max() < WHISPER_TOLERANCE
        assert np.abs(together - reference).max() < WHISPER_TOLERANCE
    with torch.no_grad():  # the graph's input: the same normalized encoder features as torch's, bit for bit
        for w in batch:
            reference, _ = model.features(torch.from_numpy(w)[None], torch.tensor([w.shape[0]]))
            np.testing.assert_array_equal(onnx.features(w), reference[0].numpy())
    assert expected[-1].shape[0] == 792  # 31.7 s: 3170 mel frames (2 windows), 1585 encoder frames, stacked by 2


def runtime_transcribes_like_torch(checkpoint: Path, onnx_path: Path, tmp_path: Path, without: tuple[str, ...]) -> None:
    """The runtime's command line, in a process of its own, transcribes two files as torch does greedily,
    without importing any of the modules named in `without`."""
    import soundfile

    files = []
    for i, seconds in enumerate((1.0, 2.5)):
        files.append(tmp_path / f"{i}.wav")
        soundfile.write(files[-1], speechlike(seconds, seed=i), 16000, subtype="FLOAT")
    model, tokenizer, _ = load_model(checkpoint)
    expected = []
    with torch.inference_mode():
        for f in files:
            wave = torch.from_numpy(soundfile.read(f, dtype="float32")[0])
            log_probs, frames = model(wave[None], torch.tensor([wave.shape[0]]))
            expected.append(tokenizer.decode(greedy_ids(log_probs[0, : int(frames[0])].numpy(), tokenizer.blank)))
    code = ("import sys\nfrom asr.serving.onnx_runtime import main\ncode = main(sys.argv[1:])\n"
            f"for name in {without!r}:\n    assert name not in sys.modules, f'the ONNX runtime imported {{name}}'\n"
            "sys.exit(code)")
    run = subprocess.run([sys.executable, "-c", code, str(onnx_path), "--threads", "1", *map(str, files)],
                         capture_output=True, text=True, cwd=ROOT, timeout=300,
                         env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"})
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines() == [f"{f}\t{t}" for f, t in zip(files, expected)]
    assert all(expected)  # the random model emits letters, so equality says something


@needs_encoder
def test_whisper_runtime_transcribes_like_torch_without_importing_torch(whisper_onnx, tmp_path):
    checkpoint, path, _ = whisper_onnx
    runtime_transcribes_like_torch(checkpoint, path, tmp_path, ("torch",))


@needs_encoder
def test_whisper_runtime_refuses_another_encoder(whisper_onnx, tmp_path):
    import onnx

    _, path, metadata = whisper_onnx
    graph = onnx.load(str(path))
    entry = next(p for p in graph.metadata_props if p.key == "asr")
    entry.value = json.dumps({**metadata, "encoder_id": "whisper-base.en:" + "ab" * 32})
    onnx.save(graph, str(tmp_path / "other.onnx"))
    with pytest.raises(ValueError, match=r"trained on the features of whisper-base\.en \(sha256 ababab"):
        OnnxRecognizer(tmp_path / "other.onnx")


# --------------------------------------------------------------------------- the whisper-torch frontend
# Whisper's encoder in PyTorch, its top blocks perhaps trained: the graph holds the whole encoder
# (asr.serving.onnx_export), so these run on a tiny random encoder written as a CTranslate2 model.bin
# (tests/test_whisper_torch.py) and need neither the installed encoder nor CTranslate2.


@pytest.fixture(scope="module")
def tiny_encoder(tmp_path_factory) -> Path:
    from test_whisper_torch import tiny_encoder_variables, write_model_bin

    folder = tmp_path_factory.mktemp("tiny-whisper")
    write_model_bin(folder / "model.bin", tiny_encoder_variables(layers=2, positions=1500))
    return folder


def whisper_torch_checkpoint(path: Path, encoder: Path, overrides: list[str]) -> Path:
    """A random whisper-torch model whose trained blocks and norm (if any) differ from the encoder's own,
    so a graph that ran the installed encoder's blocks instead would not match."""
    random_checkpoint(path, ["features.frontend=whisper-torch", f"features.encoder={encoder}", "model.subsampling=stack",
                             "model.hidden_size=16", "model.num_layers=1", *overrides])
    from asr.checkpoint import read_checkpoint

    checkpoint = read_checkpoint(path)
    generator = torch.Generator().manual_seed(1)
    for key, value in checkpoint["model"].items():
        if key.startswith(("frontend.top_blocks.", "frontend.top_norm.", "frontend.layer_weights")):
            value.add_(0.3 * torch.randn(value.shape, generator=generator))
    save_checkpoint(path, checkpoint)
    return path


@pytest.mark.parametrize("overrides", [
    ["features.finetune_blocks=0"], ["features.finetune_blocks=1"], ["features.finetune_blocks=2"],
    ["features.encoder_layers=weighted"], ["features.encoder_layers=last2"],
], ids=["float-last", "top1", "top2", "weighted", "last2"])
def test_whisper_torch_onnx_log_probs_match_torch(tiny_encoder, tmp_path, overrides):
    checkpoint = whisper_torch_checkpoint(tmp_path / "model.pt", tiny_encoder, overrides)
    metadata = export_onnx(checkpoint, tmp_path / "model.onnx")
    model, _, config = load_model(checkpoint)
    assert metadata["frontend"] == "whisper-torch" and metadata["encoder_id"] == config.features.encoder_id
    assert metadata["features"]["finetune_blocks"] == config.features.finetune_blocks
    assert metadata["features"]["dim"] == model.frontend.dim
    onnx = OnnxRecognizer(tmp_path / "model.onnx", threads=1)
    assert onnx.encoder is None  # no CTranslate2: the graph holds the encoder
    batch = [speechlike(s, seed=i) for i, s in enumerate((1.3, 4.0, 31.7))]  # the last one in 2 windows
    expected = torch_log_probs(model, batch)
    assert expected[-1].shape[0] == 396  # 31.7 s: 3170 mel frames (2 windows), 1585 encoder frames, stacked by 4
    for single, together, reference in zip([onnx.log_probs([w])[0] for w in batch], onnx.log_probs(batch), expected):
        assert single.shape == reference.shape and together.shape == reference.shape
        assert np.abs(single - reference).max() < TOLERANCE
        assert np.abs(together - reference).max() < TOLERANCE
        assert np.abs(np.diff(reference, axis=0)).max() > 0.1  # frames differ: wrong features would show
    with pytest.raises(ValueError, match="computes its features inside the graph"):
        onnx.features(batch[0])


def test_whisper_torch_window_features_ignore_padding(tiny_encoder, tmp_path):
    """The graph's path: windows of different lengths in one padded batch give each window's features
    alone (the masks in both convolutions' reach and in attention), and those of the torch frontend."""
    from asr.frontend.whisper_finetune import frozen_encoder
    from asr.frontend.whisper_numpy import whisper_log_mel

    model, _, _ = load_model(whisper_torch_checkpoint(tmp_path / "m.pt", tiny_encoder, ["features.finetune_blocks=1"]))
    waves = [speechlike(s, seed=i) for i, s in enumerate((2.0, 0.73, 1.01))]
    mels = [torch.from_numpy(whisper_log_mel(w, 8)) for w in waves]
    frames = torch.tensor([m.shape[1] for m in mels])
    batch = torch.nn.utils.rnn.pad_sequence([m.T for m in mels], batch_first=True).transpose(1, 2)
    with torch.no_grad():
        together = model.frontend.window_features(batch, frames)
        for i, (wave, mel) in enumerate(zip(waves, mels)):
            alone = model.frontend.window_features(mel[None], frames[i:i + 1])[0]
            reference, n = model.frontend(torch.from_numpy(wave)[None], torch.tensor([wave.shape[0]]))
            assert alone.shape[0] == int(n[0]) == (mel.shape[1] + 1) // 2
            torch.testing.assert_close(together[i, : alone.shape[0]], alone, rtol=0, atol=1e-5)
            torch.testing.assert_close(alone, reference[0], rtol=0, atol=1e-5)
        # The padding matters: without the masks the shorter windows' features change.
        encoder = frozen_encoder(model.frontend.folder, torch.device("cpu"))
        unmasked, masked = encoder.hidden_states(batch)[-1], encoder.hidden_states(batch, None, frames)[-1]
        assert (unmasked[1, : (int(frames[1]) + 1) // 2] - masked[1, : (int(frames[1]) + 1) // 2]).abs().max() > 1e-2


def test_whisper_torch_runtime_transcribes_like_torch_without_torch_or_ctranslate2(tiny_encoder, tmp_path, capsys):
    checkpoint = whisper_torch_checkpoint(tmp_path / "model.pt", tiny_encoder, ["features.finetune_blocks=1"])
    out = tmp_path / "model.onnx"
    assert asr_main(["export", "onnx", str(checkpoint), "--out", str(out)]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    runtime_transcribes_like_torch(checkpoint, out, tmp_path, ("torch", "ctranslate2"))


# --------------------------------------------------------------------------- int8 weights

INT8_TOLERANCE = 0.05  # largest |log-prob difference| from torch; measured 2.8e-3 (log-mel) and 2.2e-2 (whisper-torch)


@pytest.mark.parametrize("kind", ["logmel", "whisper-torch"])
def test_int8_export_quantizes_and_stays_close_to_torch(kind, tiny_encoder, tmp_path, capsys):
    import onnx

    if kind == "logmel":
        checkpoint = random_checkpoint(tmp_path / "model.pt", ["model.subsampling=conv", "model.hidden_size=48",
                                                               "model.num_layers=2"])
        batch = waves()
    else:
        checkpoint = whisper_torch_checkpoint(tmp_path / "model.pt", tiny_encoder, ["features.finetune_blocks=1"])
        batch = [speechlike(s, seed=i) for i, s in enumerate((1.3, 31.7))]
    assert asr_main(["export", "onnx", str(checkpoint), "--out", str(tmp_path / "int8.onnx"), "--int8"]) == 0
    assert "(int8 weights)" in capsys.readouterr().out
    float_metadata = export_onnx(checkpoint, tmp_path / "float.onnx")
    operators = {node.op_type for node in onnx.load(str(tmp_path / "int8.onnx")).graph.node}
    assert {"MatMulInteger", "DynamicQuantizeLSTM"} <= operators  # the products and the head's LSTM
    onnx_model = OnnxRecognizer(tmp_path / "int8.onnx", threads=1)
    assert onnx_model.meta["int8"] is True and float_metadata["int8"] is False
    model, _, _ = load_model(checkpoint)
    for quantized, reference in zip(onnx_model.log_probs(batch), torch_log_probs(model, batch)):
        assert quantized.shape == reference.shape
        assert 0 < np.abs(quantized - reference).max() < INT8_TOLERANCE
    if kind == "logmel":  # 48-wide matrices: the int8 weights outweigh their scales (not so for the 12-wide encoder)
        assert (tmp_path / "int8.onnx").stat().st_size < 0.5 * (tmp_path / "float.onnx").stat().st_size

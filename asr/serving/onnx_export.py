"""`asr export onnx`: the model from its frontend's normalized features to CTC log-probs as an ONNX
graph (`CTCModel.encode`), with everything the torch-free runtime (asr.serving.onnx_runtime) needs stored in
the file's metadata: the feature settings and normalizer statistics, the tokenizer, the frame shift,
and for the whisper frontend the encoder's identity (the encoder itself is not in the graph: the
runtime runs it with CTranslate2, as training did, and refuses another encoder).

Graph: inputs `features` (B, T, D) float32 normalized features (log-mel, D = n_mels; or, for the
whisper frontend, the frozen encoder's outputs, D = its width, 384 for tiny) and `lengths` (B,) int64 frames;
outputs `log_probs` (B, T', V) float32 and `out_lengths` (B,) int64. Batch and time are dynamic.

A whisper-torch model (Whisper's encoder in PyTorch, its top blocks perhaps trained) has trained
weights in its encoder that CTranslate2 does not have, so its graph holds the whole encoder, float32
(the installed encoder's frozen part and the checkpoint's trained blocks; ~33 MB for tiny), and starts
at Whisper's log-mel, cut into the same <= 30 s windows as in torch (`WhisperTorchFrontend.window_features`):
inputs `mel` (W, n_mels, F) windows padded with zeros, `mel_frames` (W,) int64 real frames of each,
`gather` (B, T) int64 (row w * ceil(F / 2) + j of the windows' flattened outputs for each utterance's
frame, windows in order) and `lengths` (B,) int64; outputs as above. The runtime then needs neither
torch nor CTranslate2.

`int8` (`asr export onnx --int8`): the weights of the matrix products and LSTMs in int8, per channel,
activations quantized on the fly (onnxruntime's dynamic quantization): for a whisper-torch model about
a third of the file and 1.7x the speed, at a small cost in accuracy (benchmarks/RESULTS.md).

Written with torch's TorchScript-based exporter (dynamo=False), which maps the recurrent layers to
ONNX's LSTM/GRU/RNN operators; torch 2.14's default dynamo exporter did not finish decomposing the
bidirectional LSTM of a 0.7 M-parameter model in 10 minutes.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..checkpoint import load_model
from ..files import write_atomic
from .onnx_runtime import METADATA_KEY  # the metadata_props entry holding the JSON below
from ..frontend.logmel import LogMel

OPSET = 17


class _Encoder(nn.Module):
    """CTCModel.encode as a module of its own, so the exported graph starts at the features."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, features: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.model.encode(features, lengths)


class _WhisperTorchEncoder(nn.Module):
    """A whisper-torch model from log-mel windows to log-probs (the module docstring's graph)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, mel: torch.Tensor, mel_frames: torch.Tensor, gather: torch.Tensor,
                lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        windows = self.model.frontend.window_features(mel, mel_frames)
        features = windows.reshape(-1, windows.shape[-1])[gather]
        return self.model.encode(self.model.normalizer(features), lengths)


def onnx_metadata(model: Any, tokenizer: Any, source: str) -> dict[str, Any]:
    """What the runtime needs besides the graph (JSON-serializable)."""
    features = model.feature_config
    metadata = {
        "format": 1,
        "source": source,
        "frontend": features.frontend,
        "features": {"sample_rate": features.sample_rate, "n_fft": features.n_fft,
                     "hop_length": features.hop_length, "n_mels": features.n_mels},
        "normalizer": {"mean": model.normalizer.mean.tolist(), "std": model.normalizer.std.tolist()},
        "tokenizer": tokenizer.to_dict(),
        "frame_shift": model.frame_shift,
        # The pipeline's frame grid and shortest input (asr.transcribe.AcousticModel).
        "samples_per_frame": model.samples_per_frame,
        "min_samples": model.min_samples(),
    }
    if features.frontend in ("whisper", "whisper-torch"):
        from ..frontend.whisper_numpy import HOP_LENGTH, N_FFT, SAMPLE_RATE

        # Whisper's own log-mel settings (the encoder's input), and the encoder's output width (the
        # whisper graph's input; a whisper-torch graph holds the encoder, so for it the id is a record).
        metadata["features"] = {"sample_rate": SAMPLE_RATE, "n_fft": N_FFT, "hop_length": HOP_LENGTH,
                                "n_mels": model.frontend.n_mels, "dim": model.frontend.dim}
        metadata["encoder_id"] = features.encoder_id
        if features.frontend == "whisper-torch":
            metadata["features"].update(encoder_layers=features.encoder_layers, finetune_blocks=features.finetune_blocks)
    return metadata


def export_onnx(checkpoint: str | os.PathLike, out: str | os.PathLike, opset: int = OPSET,
                int8: bool = False) -> dict[str, Any]:
    """Write the ONNX graph of `checkpoint` to `out` (atomically: a temporary file, then a rename),
    check it with onnx.checker, and return its metadata. `int8`: the weights of its matrix products
    and LSTMs quantized (`quantize_int8`)."""
    import onnx

    model, tokenizer, _ = load_model(checkpoint, "cpu")
    frontend = model.feature_config.frontend
    if frontend not in ("logmel", "whisper", "whisper-torch") or (frontend == "logmel" and not isinstance(model.frontend, LogMel)):
        raise ValueError(f"{checkpoint}: asr export onnx supports the logmel, whisper and whisper-torch frontends, "
                         f"not {frontend!r} ({type(model.frontend).__name__})")
    model = model.float().eval()
    if frontend == "whisper-torch":
        # Two windows of one utterance and one of another, the second shorter: padding in every input.
        n_mels = model.frontend.n_mels
        module = _WhisperTorchEncoder(model)
        example = (torch.randn(3, n_mels, 200), torch.tensor([200, 200, 150]),
                   torch.tensor([list(range(200)), list(range(200, 275)) + [0] * 125]), torch.tensor([200, 75]))
        names = ["mel", "mel_frames", "gather", "lengths"]
        axes = {"mel": {0: "windows", 2: "mel_frames"}, "mel_frames": {0: "windows"},
                "gather": {0: "batch", 1: "frames"}, "lengths": {0: "batch"}}
    else:
        module = _Encoder(model)
        example = (torch.randn(2, 120, model.frontend.dim), torch.tensor([120, 90], dtype=torch.int64))
        names = ["features", "lengths"]
        axes = {"features": {0: "batch", 1: "frames"}, "lengths": {0: "batch"}}
    exported = io.BytesIO()
    with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
        # The exporter warns that LSTM initial states fixed at the example's batch size break other
        # batch sizes; ours are zeros shaped from the input at run time (tests run batches of 1 and 3).
        warnings.filterwarnings("ignore", message=".*batch_size other than 1.*")
        # Shape arithmetic in Python (e.g. the subsampler's frame count) is traced with a warning
        # per use; the graph keeps time dynamic (tests run other lengths than the example's).
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)  # dynamo=False is chosen, see above
        torch.onnx.export(
            module.eval(), example, exported, input_names=names, output_names=["log_probs", "out_lengths"],
            opset_version=opset, dynamo=False,
            dynamic_axes={**axes, "log_probs": {0: "batch", 1: "out_frames"}, "out_lengths": {0: "batch"}})
    graph = onnx.load_from_string(exported.getvalue())
    if int8:
        graph = quantize_int8(graph)
    metadata = onnx_metadata(model, tokenizer, Path(checkpoint).name)
    metadata["int8"] = int8
    entry = graph.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json.dumps(metadata)
    onnx.checker.check_model(graph)
    write_atomic(out, lambda f: f.write(graph.SerializeToString()))
    return metadata


def quantize_int8(graph: Any) -> Any:
    """The graph with the weights of its MatMul, Gemm and LSTM nodes in int8, per output channel, and
    their activations quantized on the fly (onnxruntime's dynamic quantization, which onnxruntime's CPU
    kernels run directly). Per channel because per-tensor scales cost a whisper-torch model on
    LibriSpeech dev 0.18 greedy CER points against 0.07 (benchmarks/RESULTS.md)."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with tempfile.TemporaryDirectory() as folder:
        source, target = Path(folder) / "float.onnx", Path(folder) / "int8.onnx"
        onnx.save(graph, str(source))
        quantize_dynamic(source, target, weight_type=QuantType.QInt8, per_channel=True,
                         op_types_to_quantize=["MatMul", "Gemm", "LSTM"])
        return onnx.load(str(target))

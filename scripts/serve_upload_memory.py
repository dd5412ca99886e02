"""Peak memory of the server's upload check (asr.serving.http.decode_upload) on a file that is small
but decodes to much: by default issue 29's 590 s of 8-channel 96 kHz FLAC silence (0.47 MB, 453 M
samples, 1.8 GB as float32). Prints one line: file size, peak RSS before and after, and the outcome.

    python scripts/serve_upload_memory.py                      # the issue's file, default limits
    python scripts/serve_upload_memory.py --max-samples 500000000   # a limit that lets it decode

The file is generated a second at a time (a few seconds of CPU); --keep FILE writes it there, or
reads it back when it exists. Peak RSS is the process's (ru_maxrss), so run one case per process.
"""

from __future__ import annotations

import argparse
import io
import resource
import sys
from pathlib import Path

import numpy as np
import soundfile

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from asr.serving.http import RequestError, ServeConfig, decode_upload  # noqa: E402


def silent_flac(channels: int, rate: int, seconds: int) -> bytes:
    """Silence as 16-bit FLAC, written a second at a time (tests/test_serve.py uses it too)."""
    out = io.BytesIO()
    with soundfile.SoundFile(out, "w", rate, channels, format="FLAC", subtype="PCM_16") as f:
        for _ in range(seconds):
            f.write(np.zeros((rate, channels), np.int16))
    return out.getvalue()


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # Linux: kilobytes


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--channels", type=int, default=8)
    p.add_argument("--rate", type=int, default=96000)
    p.add_argument("--seconds", type=int, default=590)
    p.add_argument("--max-samples", type=int, default=ServeConfig.max_samples)
    p.add_argument("--keep", type=Path, default=None, help="the generated file: read if it exists, else written")
    args = p.parse_args()
    if args.keep is not None and args.keep.is_file():
        data = args.keep.read_bytes()
    else:
        data = silent_flac(args.channels, args.rate, args.seconds)
        if args.keep is not None:
            args.keep.write_bytes(data)
    before = peak_rss_gb()
    try:
        samples, rate = decode_upload(data, "silence.flac", ServeConfig(max_samples=args.max_samples))
        outcome = f"decoded {samples.shape} at {rate} Hz"
    except RequestError as e:
        outcome = f"refused {e.status}: {e.message}"
    print(f"{len(data) / 1e6:.2f} MB file; peak RSS {before:.2f} GB before, {peak_rss_gb():.2f} GB after; {outcome}")


if __name__ == "__main__":
    main()

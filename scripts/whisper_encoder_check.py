"""How close asr.frontend.whisper_torch (Whisper's encoder in PyTorch, weights from model.bin) comes to
CTranslate2 running the same model.bin, float32 and int8, on real speech; and how fast each runs.

    OMP_NUM_THREADS=1 python scripts/whisper_encoder_check.py --manifest data/libri_dev.jsonl --limit 20

Prints one Markdown row per CTranslate2 compute type: per-frame cosine (min and mean over frames),
the largest absolute difference, the mean relative difference (|a - b| / |b| per frame), the largest
|value| of CTranslate2's output (for scale), and seconds of audio encoded per second by each.
Each utterance's log-mel is asr.frontend.whisper_numpy.whisper_log_mel, cut into the same <= 30 s windows.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from asr.data import load_utterance_audio, read_manifest  # noqa: E402
from asr.frontend.whisper_numpy import SAMPLE_RATE, encode_windows, find_encoder, mel_windows, whisper_log_mel  # noqa: E402
from asr.frontend.whisper_torch import load_whisper_encoder  # noqa: E402


def torch_encode(encoder: torch.nn.Module, mel: np.ndarray) -> np.ndarray:
    """(n_mels, F) -> (ceil(F / 2), D), window by window as encode_windows does."""
    with torch.inference_mode():
        return np.concatenate([encoder(torch.from_numpy(mel[None, :, a:b]))[0].numpy() for a, b in mel_windows(mel.shape[1])])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--manifest", type=Path, required=True)
    parser.add_argument("--limit", type=int, default=20, help="first N utterances")
    parser.add_argument("--encoder", default="", help="CTranslate2 Whisper folder (default: as asr finds it)")
    args = parser.parse_args()
    import ctranslate2

    threads = torch.get_num_threads()
    folder = find_encoder(args.encoder)
    encoder = load_whisper_encoder(folder)
    utts = read_manifest(args.manifest)[: args.limit]
    mels = [whisper_log_mel(load_utterance_audio(u, SAMPLE_RATE).numpy()) for u in utts]
    audio_seconds = sum(u.duration for u in utts)
    start = time.perf_counter()
    ours = [torch_encode(encoder, mel) for mel in mels]
    torch_speed = audio_seconds / (time.perf_counter() - start)
    print(f"{len(utts)} utterances, {audio_seconds:.0f} s of audio, {threads} thread(s), encoder {folder}")
    print("| CTranslate2 | min cosine | mean cosine | max abs diff | mean rel diff | max abs value | CT2 audio s/s | torch float32 audio s/s |")
    print("|---|---|---|---|---|---|---|---|")
    for compute_type in ("float32", "int8"):
        engine = ctranslate2.models.Whisper(str(folder), device="cpu", compute_type=compute_type, intra_threads=threads)
        start = time.perf_counter()
        theirs = [encode_windows(engine, mel) for mel in mels]
        speed = audio_seconds / (time.perf_counter() - start)
        a, b = np.concatenate(ours), np.concatenate(theirs)
        cosine = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
        relative = np.linalg.norm(a - b, axis=1) / np.linalg.norm(b, axis=1)
        print(f"| {compute_type} | {cosine.min():.5f} | {cosine.mean():.5f} | {np.abs(a - b).max():.1e} | "
              f"{relative.mean():.1e} | {np.abs(b).max():.1f} | {speed:.0f} | {torch_speed:.0f} |")


if __name__ == "__main__":
    main()

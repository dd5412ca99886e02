"""ONNX (asr.serving.onnx_runtime, no torch) against torch on a manifest: transcripts equal or not, the largest
log-prob difference, and CPU RTFx of each, one file at a time (batch of one, as a service would run
a request), from the waveform in memory to the greedy transcript (features included; for a
whisper-frontend model both sides run the same CTranslate2 encoder, with torch's or numpy's log-mel;
a whisper-torch model's graph holds the encoder).

    python scripts/bench_onnx.py exp/fsdd/best.pt data/test.jsonl --threads 1 [--onnx model.onnx] [--int8]

Also prints each runtime's greedy WER and CER against the manifest's texts (with --int8, the export's
weights in int8: transcripts may then differ, and the error rates say by how much it matters).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from asr.checkpoint import load_model  # noqa: E402
from asr.data import load_utterance_audio, read_manifest  # noqa: E402
from asr.decode import greedy_decode  # noqa: E402
from asr.serving.onnx_export import export_onnx  # noqa: E402
from asr.decode import greedy_ids  # noqa: E402
from asr.serving.onnx_runtime import OnnxRecognizer  # noqa: E402
from asr.score import score  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("manifest", type=Path)
    parser.add_argument("--onnx", type=Path, default=None, help="exported model (default: export to a temporary file)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--limit", type=int, default=0, help="first N utterances only (0: all)")
    parser.add_argument("--int8", action="store_true", help="export with int8 weights (asr export onnx --int8)")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    model, tokenizer, _ = load_model(args.checkpoint)
    utts = read_manifest(args.manifest)[: args.limit or None]
    rate = model.feature_config.sample_rate
    waves = [load_utterance_audio(u, rate) for u in utts]
    audio_seconds = sum(w.shape[0] for w in waves) / rate
    with tempfile.TemporaryDirectory() as tmp:
        path = args.onnx or Path(tmp) / "model.onnx"
        if args.onnx is None:
            export_onnx(args.checkpoint, path, int8=args.int8)
        onnx = OnnxRecognizer(path, threads=args.threads)

        torch_texts, torch_lp = [], []
        start = time.perf_counter()
        with torch.inference_mode():
            for w in waves:
                lp, n = model(w[None], torch.tensor([w.shape[0]]))
                torch_texts.append(tokenizer.decode(greedy_decode(lp, n, tokenizer.blank)[0]))
                torch_lp.append(lp[0, : int(n[0])].numpy())
        torch_seconds = time.perf_counter() - start

        numpy_waves = [w.numpy() for w in waves]
        onnx_texts, onnx_lp = [], []
        start = time.perf_counter()
        for w in numpy_waves:
            lp = onnx.log_probs([w])[0]
            onnx_texts.append(tokenizer.decode(greedy_ids(lp, tokenizer.blank)))
            onnx_lp.append(lp)
        onnx_seconds = time.perf_counter() - start

    same = sum(a == b for a, b in zip(torch_texts, onnx_texts))
    diff = max(float(np.abs(a - b).max()) for a, b in zip(torch_lp, onnx_lp))
    print(f"{len(utts)} utterances, {audio_seconds / 60:.1f} min of audio, {args.threads} thread(s)")
    print(f"transcripts equal: {same}/{len(utts)}; max |log-prob difference| {diff:.2e}")
    differing = [(u, a, b) for a, b, u in zip(torch_texts, onnx_texts, utts) if a != b]
    for u, a, b in differing[:5]:
        print(f"  differs: {u.id}: torch {a!r} onnx {b!r}")
    if len(differing) > 5:
        print(f"  ... and {len(differing) - 5} more")
    refs = {u.id: u.text for u in utts}
    torch_score = score(refs, {u.id: t for u, t in zip(utts, torch_texts)})
    onnx_score = score(refs, {u.id: t for u, t in zip(utts, onnx_texts)})
    print("| runtime | seconds | RTFx | greedy WER / CER |")
    print("|---|---|---|---|")
    print(f"| torch {torch.__version__} | {torch_seconds:.2f} | {audio_seconds / torch_seconds:.0f} | "
          f"{torch_score.wer:.2f} / {torch_score.cer:.2f} |")
    import onnxruntime

    features = "numpy features"
    if onnx.frontend == "whisper":  # both runtimes spend most of their time in the same CTranslate2 encoder
        import ctranslate2

        features = f"numpy Whisper log-mel, CTranslate2 {ctranslate2.__version__} int8 encoder"
    elif onnx.frontend == "whisper-torch":  # the whole encoder, float32, in the graph
        features = "numpy Whisper log-mel, the encoder in the graph"
    features += ", int8 weights" if onnx.meta.get("int8") else ""
    print(f"| onnxruntime {onnxruntime.__version__} ({features}) | {onnx_seconds:.2f} | {audio_seconds / onnx_seconds:.0f} | "
          f"{onnx_score.wer:.2f} / {onnx_score.cer:.2f} |")
    return 0 if same == len(utts) or onnx.meta.get("int8") else 1


if __name__ == "__main__":
    sys.exit(main())

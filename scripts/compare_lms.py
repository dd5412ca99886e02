#!/usr/bin/env python
"""Decode a manifest with two LM files, e.g. the shipped ARPA and its KenLM binary (`asr lm binary`),
and show whether the transcripts are the same: one line per utterance that differs, then counts,
WER of each and the LM load times. The acoustic model runs once (scripts/tune_decoder.py's
dev_log_probs); decoding settings come from a decode file (default models/decode.yaml).

    python scripts/compare_lms.py models/en-whisper-tiny-bilstm-ctc.pt data/libri_dev.jsonl \\
        models/en-3gram.arpa.gz models/en-3gram.bin --threads 1
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from asr.config import DecodeConfig  # noqa: E402
from asr.decode import FlashlightDecoder, decode_settings, load_flashlight_lm  # noqa: E402
from asr.score import score  # noqa: E402
from tune_decoder import dev_log_probs  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", type=Path)
    p.add_argument("manifest", type=Path)
    p.add_argument("lms", nargs=2, help="two KenLM files (ARPA or binary) over the same words")
    p.add_argument("--decode-config", type=Path, default=ROOT / "models" / "decode.yaml",
                   help="beam, threshold, weights and lexicon (its lm entry is ignored)")
    p.add_argument("--max-utts", type=int, default=0, help="the first N utterances (0: all)")
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    settings = decode_settings(DecodeConfig(), decode_file=args.decode_config)
    start = time.perf_counter()
    tokenizer, utts, seconds, log_probs = dev_log_probs(args.model, args.manifest, args.max_utts, "cpu")
    print(f"acoustic model on {len(utts)} utterances ({seconds / 3600:.2f} h): {time.perf_counter() - start:.1f} s")
    lengths = torch.tensor([lp.shape[0] for lp in log_probs])
    padded = torch.nn.utils.rnn.pad_sequence(log_probs, batch_first=True)
    refs = {u.id: u.text for u in utts}
    texts = []
    for lm_path in args.lms:
        start = time.perf_counter()
        lm = load_flashlight_lm(lm_path, settings.lexicon)
        loaded = time.perf_counter() - start
        decoder = FlashlightDecoder(tokenizer, lm, settings.lexicon, settings.beam_size, settings.lm_weight,
                                    settings.word_score, beam_threshold=settings.beam_threshold)
        decoder.ready()  # its search is built in a process of its own: before the clock
        start = time.perf_counter()
        hyps = [h[0].text for h in decoder(padded, lengths)]
        report = score(refs, dict(zip(refs, hyps)))
        print(f"{lm_path}: LM loaded (with the lexicon's word list) in {loaded:.2f} s, decoded in {time.perf_counter() - start:.1f} s, "
              f"WER {report.wer:.2f} CER {report.cer:.2f}")
        texts.append(hyps)
    differ = [(u.id, a, b) for u, a, b in zip(utts, *texts) if a != b]
    for uid, a, b in differ:
        print(f"differs {uid}:\n  {a}\n  {b}")
    print(f"same transcripts: {len(utts) - len(differ)}/{len(utts)} (beam {settings.beam_size}, threshold "
          f"{settings.beam_threshold:g}, lm_weight {settings.lm_weight:g}, word_score {settings.word_score:g})")
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python
"""Compare our beam searches with pyctcdecode on the same log-probs, the same LM and the same beam
size: WER and RTFx (audio seconds per second of search, acoustic model excluded) of each.

    python scripts/bench_decode.py exp/x/best.pt data/dev.jsonl --beam-size 10 \\
        --lm lm.arpa --lexicon lexicon.txt --lm-weight 1.0 --word-score 0.5 --max-utts 100

Rows: greedy; `beam` (our CTC prefix beam search, no LM) against pyctcdecode without LM; with --lm,
`beam-lm` (flashlight through torchaudio, lexicon-constrained) against pyctcdecode with the same
KenLM file (alpha = LM weight, beta = word score, and pyctcdecode's own defaults alpha 0.5 beta 1.5),
given the LM's words as its unigram list.

pyctcdecode is optional: `pip install --no-deps pyctcdecode pygtrie` (its metadata pins numpy<2,
which it does not need here; installing it with dependencies would downgrade numpy) and, for its LM
rows, KenLM's Python module (`pip install --no-deps kenlm-ex`, a binary wheel of kpu/kenlm). Without
them those rows are skipped with a message. Search runs in one thread for both.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from asr.decode import FlashlightDecoder, GreedyDecoder, PrefixBeamDecoder  # noqa: E402
from asr.lm import read_vocab  # noqa: E402
from asr.score import score  # noqa: E402
from tune_decoder import dev_log_probs  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", type=Path)
    p.add_argument("manifest", type=Path)
    p.add_argument("--beam-size", type=int, default=10)
    p.add_argument("--lm", default="")
    p.add_argument("--lexicon", default="")
    p.add_argument("--lm-weight", type=float, default=1.0)
    p.add_argument("--word-score", type=float, default=0.0)
    p.add_argument("--max-utts", type=int, default=0)
    p.add_argument("--device", default="auto")
    args = p.parse_args(argv)

    torch.set_num_threads(1)
    tokenizer, utts, audio, log_probs = dev_log_probs(args.model, args.manifest, args.max_utts, args.device)
    refs = {u.id: u.text for u in utts}
    lengths = torch.tensor([lp.shape[0] for lp in log_probs])
    padded = torch.nn.utils.rnn.pad_sequence(log_probs, batch_first=True)
    print(f"{len(utts)} utterances, {audio / 60:.1f} min of audio, {int(lengths.sum())} frames; "
          f"beam size {args.beam_size}; torch threads 1")

    rows = []

    def run(name: str, fn) -> None:
        start = time.perf_counter()
        texts = fn()
        seconds = time.perf_counter() - start
        report = score(refs, dict(zip(refs, texts)))
        rows.append((name, report.wer, report.cer, audio / max(seconds, 1e-9), seconds))
        print(f"  {name}: WER {report.wer:.2f} CER {report.cer:.2f} RTFx {audio / seconds:.0f} ({seconds:.1f} s)", flush=True)

    run("greedy (ours)", lambda: [h[0].text for h in GreedyDecoder(tokenizer)(padded, lengths)])
    run(f"beam {args.beam_size}, no LM (ours, prefix search)",
        lambda: [h[0].text for h in PrefixBeamDecoder(tokenizer, args.beam_size)(padded, lengths)])

    pyctc = None
    try:
        logging.getLogger("pyctcdecode").setLevel(logging.ERROR)
        import pyctcdecode

        pyctc = pyctcdecode
    except ImportError as e:
        print(f"  pyctcdecode rows skipped: pyctcdecode is not installed ({e}); pip install --no-deps pyctcdecode pygtrie")
    labels = ["" if i == tokenizer.blank else s for i, s in enumerate(tokenizer.symbols)]
    arrays = [lp.numpy() for lp in log_probs]
    if pyctc is not None:
        plain = pyctc.build_ctcdecoder(labels)
        run(f"beam {args.beam_size}, no LM (pyctcdecode {pyctc.__version__ if hasattr(pyctc, '__version__') else ''})".replace(" )", ")"),
            lambda: [plain.decode(a, beam_width=args.beam_size) for a in arrays])

    if args.lm:
        flash = FlashlightDecoder(tokenizer, args.lm, args.lexicon, args.beam_size, args.lm_weight, args.word_score)
        flash.ready()  # its search is built in a process of its own: before the clock
        run(f"beam-lm {args.beam_size} (ours: flashlight, {'lexicon' if args.lexicon else 'lexicon-free'}, "
            f"lm_weight {args.lm_weight:g}, word_score {args.word_score:g})",
            lambda: [h[0].text for h in flash(padded, lengths)])
        if pyctc is not None:
            try:
                import kenlm  # noqa: F401
            except ImportError:
                print("  pyctcdecode LM rows skipped: KenLM's Python module is missing (pip install --no-deps kenlm-ex)")
            else:
                unigrams = read_vocab(args.lm)
                for alpha, beta in ((args.lm_weight, args.word_score), (0.5, 1.5)):
                    dec = pyctc.build_ctcdecoder(labels, kenlm_model_path=args.lm, unigrams=unigrams, alpha=alpha, beta=beta)
                    run(f"beam {args.beam_size} + LM (pyctcdecode, alpha {alpha:g}, beta {beta:g})",
                        lambda dec=dec: [dec.decode(a, beam_width=args.beam_size) for a in arrays])

    print()
    print("| decoder | WER % | CER % | RTFx (search only) | search s |")
    print("|---|---|---|---|---|")
    for name, wer, cer, rtfx, seconds in rows:
        print(f"| {name} | {wer:.2f} | {cer:.2f} | {rtfx:.0f} | {seconds:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

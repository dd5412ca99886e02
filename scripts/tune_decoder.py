#!/usr/bin/env python
"""Tune the LM weight and word score of beam-lm decoding on a dev manifest, and write the best pair
into the experiment's decode config (decode.yaml next to the checkpoint, read by `asr decode` and
`asr transcribe`).

    python scripts/tune_decoder.py exp/x/best.pt data/dev.jsonl --lm lm.arpa --lexicon lexicon.txt \\
        --max-utts 100 --lm-weights 0.5 1 1.5 2 --word-scores -1 0 1 2          # grid
    python scripts/tune_decoder.py ... --random 20 --seed 0                      # 20 random pairs
    python scripts/tune_decoder.py models/en-whisper-tiny-bilstm-ctc.pt data/libri_dev.jsonl \
        --lm models/en-3gram.arpa.gz --lexicon models/en-lexicon.txt --lm-weights 3.5 --word-scores 1 \
        --beam-sizes 25 50 100 200 --beam-thresholds 15 25 50 --threads 1 --no-write   # speed/WER curve

The acoustic model runs once; each setting only re-runs the search on the stored log-probs, and the
LM is loaded once. Prints one line per setting (WER, CER, decode-only seconds and RTFx: audio seconds
over the seconds of the search alone, in this process's threads) and the best one; with several beam
sizes or thresholds, also a Markdown table of the trade-off curve, fastest setting first.
"""

from __future__ import annotations

import argparse
import itertools
import random
import sys
import time
from pathlib import Path

import torch
import yaml
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # scripts/, for peers.py's CPU clock

from asr.checkpoint import load_model, resolve_device  # noqa: E402
from asr.data import load_utterance_audio, read_manifest  # noqa: E402
from asr.decode import FlashlightDecoder, GreedyDecoder, load_flashlight_lm  # noqa: E402
from asr.transcribe import Pipeline  # noqa: E402
from asr.score import score  # noqa: E402
from peers import cpu_seconds_with_workers  # noqa: E402


def dev_log_probs(model_path, manifest, max_utts: int = 0, device: str = "auto"):
    """(tokenizer, utterances, audio seconds, per-utterance (T, V) CPU log-probs) of the first
    `max_utts` (0: all) utterances of a manifest; shared with bench_decode.py."""
    device = resolve_device(device)
    model, tokenizer, _ = load_model(model_path, device)
    utts = read_manifest(manifest)
    if max_utts:
        utts = utts[:max_utts]
    rate = model.feature_config.sample_rate
    waves = [load_utterance_audio(u, rate) for u in utts]
    log_probs = Pipeline.for_model(model, tokenizer, device).log_probs([w.numpy() for w in waves])
    return tokenizer, utts, sum(w.shape[0] for w in waves) / rate, [torch.from_numpy(lp) for lp in log_probs]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", type=Path, help="checkpoint (.pt)")
    p.add_argument("manifest", type=Path, help="dev manifest with reference texts (never the test set)")
    p.add_argument("--lm", required=True, help="KenLM ARPA or binary")
    p.add_argument("--lexicon", default="", help="spelling lexicon (asr lm lexicon); omitted: lexicon-free")
    p.add_argument("--beam-sizes", "--beam-size", type=int, nargs="+", default=[50])
    p.add_argument("--beam-thresholds", "--beam-threshold", type=float, nargs="+", default=[25.0])
    p.add_argument("--lm-weights", type=float, nargs="+", default=[0.5, 1.0, 1.5, 2.0, 3.0])
    p.add_argument("--word-scores", type=float, nargs="+", default=[-2.0, -1.0, 0.0, 1.0, 2.0])
    p.add_argument("--random", type=int, default=0, metavar="N",
                   help="instead of the grid, N random pairs uniform in the ranges of --lm-weights and --word-scores")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-utts", type=int, default=0, help="tune on the first N utterances (0: all)")
    p.add_argument("--out", type=Path, default=None, help="decode config to update (default: decode.yaml next to MODEL)")
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--workers", type=int, default=1, help="decoder worker processes (default 1: time the search alone)")
    p.add_argument("--no-write", action="store_true", help="only print: leave the decode config as it is")
    p.add_argument("--quiet", action="store_true", help="no progress bar (it appears only when stderr is a terminal)")
    args = p.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    start = time.perf_counter()
    tokenizer, utts, audio_seconds, log_probs = dev_log_probs(args.model, args.manifest, args.max_utts, args.device)
    print(f"acoustic model on {len(utts)} utterances: {time.perf_counter() - start:.1f} s", file=sys.stderr)
    refs = {u.id: u.text for u in utts}
    greedy = GreedyDecoder(tokenizer)(torch.nn.utils.rnn.pad_sequence(log_probs, batch_first=True),
                                      torch.tensor([lp.shape[0] for lp in log_probs]))
    greedy_report = score(refs, {u.id: h[0].text for u, h in zip(utts, greedy)})
    print(f"greedy: WER {greedy_report.wer:.2f} CER {greedy_report.cer:.2f}")

    if args.random:
        rng = random.Random(args.seed)
        w_lo, w_hi = min(args.lm_weights), max(args.lm_weights)
        s_lo, s_hi = min(args.word_scores), max(args.word_scores)
        pairs = [(round(rng.uniform(w_lo, w_hi), 3), round(rng.uniform(s_lo, s_hi), 3)) for _ in range(args.random)]
    else:
        pairs = list(itertools.product(args.lm_weights, args.word_scores))
    settings = [(beam, threshold, w, s) for beam, threshold in itertools.product(args.beam_sizes, args.beam_thresholds)
                for w, s in pairs]

    start = time.perf_counter()
    lm = load_flashlight_lm(args.lm, args.lexicon)
    print(f"LM loaded in {time.perf_counter() - start:.1f} s", file=sys.stderr)
    lengths = torch.tensor([lp.shape[0] for lp in log_probs])
    padded = torch.nn.utils.rnn.pad_sequence(log_probs, batch_first=True)
    results = []
    bar = tqdm(settings, desc="tuning", unit="setting", disable=args.quiet or not sys.stderr.isatty())
    for beam_size, beam_threshold, lm_weight, word_score in bar:
        decoder = FlashlightDecoder(tokenizer, lm, args.lexicon, beam_size, lm_weight, word_score,
                                    beam_threshold=beam_threshold, workers=args.workers)
        decoder.ready()  # its search is built in a process of its own: before the clock
        start, cpu_start = time.perf_counter(), cpu_seconds_with_workers()
        hyps = decoder(padded, lengths)
        seconds, cpu_seconds = time.perf_counter() - start, cpu_seconds_with_workers() - cpu_start
        decoder.close()
        report = score(refs, {u.id: h[0].text for u, h in zip(utts, hyps)})
        results.append((report.wer, report.cer, beam_size, beam_threshold, lm_weight, word_score, seconds, cpu_seconds))
        bar.write(f"beam_size {beam_size} beam_threshold {beam_threshold:g} lm_weight {lm_weight:g} "
                  f"word_score {word_score:g}: WER {report.wer:.2f} CER {report.cer:.2f} "
                  f"({seconds:.1f} s, decode-only RTFx {audio_seconds / seconds:.1f}; CPU of the search processes "
                  f"{cpu_seconds:.1f} s, RTFx {audio_seconds / max(cpu_seconds, 1e-9):.1f})", file=sys.stdout)
        bar.set_postfix_str(f"best WER {min(results)[0]:.2f}")
    if len(args.beam_sizes) > 1 or len(args.beam_thresholds) > 1:
        print(curve_table(results, audio_seconds, greedy_report.wer, greedy_report.cer))
    wer, cer, beam_size, beam_threshold, lm_weight, word_score, *_ = min(results)
    print(f"best: beam_size {beam_size} beam_threshold {beam_threshold:g} lm_weight {lm_weight:g} "
          f"word_score {word_score:g}: WER {wer:.2f} CER {cer:.2f} (greedy {greedy_report.wer:.2f})")
    if args.no_write:
        return 0

    out = args.out or args.model.parent / "decode.yaml"
    data = {}
    if out.is_file():
        data = yaml.safe_load(out.read_text(encoding="utf-8")) or {}
    section = data.setdefault("decode", {}) if "decode" in data or not data else data
    section.update({"decoder": "beam-lm", "beam_size": beam_size, "lm": portable_path(args.lm, out),
                    "lexicon": portable_path(args.lexicon, out) if args.lexicon else "",
                    "lm_weight": float(lm_weight), "word_score": float(word_score),
                    "beam_threshold": beam_threshold})
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    print(f"wrote {out}")
    return 0


def curve_table(results: list[tuple], audio_seconds: float, greedy_wer: float, greedy_cer: float) -> str:
    """The speed/accuracy trade-off as a Markdown table: one row per setting, fastest first, with
    decode-only RTFx (audio seconds / seconds of search, wall and this process's CPU time: on a
    shared machine the CPU-time figure moves less), and greedy's WER and CER for reference."""
    lines = ["| beam_size | beam_threshold | lm_weight | word_score | WER % | CER % | decode s (wall) | decode-only RTFx (wall) "
             "| decode-only RTFx (CPU time) |", "|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for wer, cer, beam, threshold, weight, word_score, seconds, cpu in sorted(results, key=lambda r: r[-1]):
        lines.append(f"| {beam} | {threshold:g} | {weight:g} | {word_score:g} | {wer:.2f} | {cer:.2f} | {seconds:.1f} | "
                     f"{audio_seconds / seconds:.1f} | {audio_seconds / max(cpu, 1e-9):.1f} |")
    lines.append(f"| greedy | — | — | — | {greedy_wer:.2f} | {greedy_cer:.2f} | — | — | — |")
    return "\n".join(lines)


def portable_path(path: str | Path, decode_file: Path) -> str:
    """`path` as the decode file should name it: relative to the file's folder when it lies in that
    folder (models/decode.yaml and its LM travel together; asr reads such paths relative to the file),
    else absolute."""
    path, folder = Path(path).resolve(), decode_file.parent.resolve()
    return str(path.relative_to(folder)) if path.is_relative_to(folder) else str(path)


if __name__ == "__main__":
    sys.exit(main())

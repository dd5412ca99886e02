"""The `asr` command: prepare, train, decode, transcribe, score, plot.

Each subcommand parses its arguments and calls one function of the stage module that does the work.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

EXIT_BAD_INPUT = 2


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "run"):
        parser.print_help()
        return EXIT_BAD_INPUT
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    try:
        return args.run(args) or 0
    except (FileNotFoundError, ValueError, RuntimeError) as e:
        print(f"asr {args.command}: error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="asr", description="BiLSTM-CTC speech recognition: prepare, train, decode, score.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("prepare", help="import a corpus into a JSON Lines manifest")
    corpora = p.add_subparsers(dest="corpus", metavar="CORPUS", required=True)
    c = corpora.add_parser("librispeech", help="LibriSpeech layout: <spk>/<chapter>/<spk>-<chapter>.trans.txt + audio")
    c.add_argument("--corpus-dir", required=True, type=Path, help="folder with the split (searched recursively)")
    c.add_argument("--out", required=True, type=Path, help="manifest to write (.jsonl)")
    c.add_argument("--max-duration", type=float, default=None, help="skip utterances longer than this (s)")
    c.add_argument("--strict", action="store_true", help="exit non-zero if any entry was skipped")
    c.set_defaults(run=_prepare)
    c = corpora.add_parser("fsdd", help="Free Spoken Digit Dataset: recordings/{digit}_{speaker}_{index}.wav")
    c.add_argument("--corpus-dir", required=True, type=Path)
    c.add_argument("--split", required=True, choices=["train", "test", "all"], help="official split: index 0-4 is test")
    c.add_argument("--out", required=True, type=Path)
    c.add_argument("--strict", action="store_true", help="exit non-zero if any entry was skipped")
    c.set_defaults(run=_prepare)

    p = sub.add_parser("download", help="download and extract a public corpus")
    p.add_argument("corpus", choices=["librispeech", "mini-librispeech", "fsdd"])
    p.add_argument("--subsets", nargs="*", default=None, help="LibriSpeech subsets, e.g. dev-clean train-clean-100")
    p.add_argument("--dest", required=True, type=Path, help="folder for archives and extracted data")
    p.set_defaults(run=_download)

    p = sub.add_parser("train", help="train a model", description="Train a BiLSTM-CTC model. Extra arguments "
                       "section.key=value override the config, e.g. train.lr=1e-3 model.num_layers=4.")
    p.add_argument("--config", type=Path, default=None, help="YAML config (conf/*.yaml); defaults if omitted")
    p.add_argument("--train", required=True, type=Path, help="training manifest")
    p.add_argument("--dev", required=True, type=Path, help="dev manifest (validated after each epoch)")
    p.add_argument("--out", required=True, type=Path, help="experiment folder (checkpoints, logs)")
    p.add_argument("--resume", action="store_true", help="continue from <out>/last.pt")
    p.add_argument("overrides", nargs="*", metavar="section.key=value")
    p.set_defaults(run=_train)

    p = sub.add_parser("decode", help="decode a manifest with a trained model")
    p.add_argument("model", type=Path, help="checkpoint (.pt)")
    p.add_argument("manifest", type=Path)
    p.add_argument("--out", required=True, type=Path, help="hypotheses, one 'id<TAB>text' per line")
    _add_inference_options(p)
    p.set_defaults(run=_decode)

    p = sub.add_parser("transcribe", help="transcribe audio files or folders")
    p.add_argument("model", type=Path, help="checkpoint (.pt)")
    p.add_argument("paths", nargs="+", help="audio files or folders")
    p.add_argument("--json", action="store_true", help="one JSON object per file instead of 'path<TAB>text'")
    _add_inference_options(p)
    p.set_defaults(run=_transcribe)

    p = sub.add_parser("score", help="WER and CER of hypotheses against references")
    p.add_argument("ref", type=Path, help="manifest or 'id<TAB>text' file")
    p.add_argument("hyp", type=Path, help="manifest or 'id<TAB>text' file")
    p.add_argument("--alignments", type=Path, default=None, help="per-utterance alignments (default: HYP.align)")
    p.add_argument("--out", type=Path, default=None, help="also write the summary here")
    p.set_defaults(run=_score)

    p = sub.add_parser("plot", help="plot loss, gradient norm and dev WER of an experiment to PNG")
    p.add_argument("exp_dir", type=Path)
    p.add_argument("--out", type=Path, default=None, help="PNG path (default: EXP_DIR/training.png)")
    p.set_defaults(run=_plot)
    return parser


def _add_inference_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--batch-seconds", type=float, default=None, help="padded audio seconds per batch (default: from the model's config)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")


def _prepare(args: argparse.Namespace) -> int:
    from .data import write_manifest
    from .prepare import prepare_fsdd, prepare_librispeech

    if args.corpus == "librispeech":
        result = prepare_librispeech(args.corpus_dir, max_duration=args.max_duration)
    else:
        result = prepare_fsdd(args.corpus_dir, args.split)
    if not result.kept:
        print(result.summary(args.corpus), file=sys.stderr)
        raise ValueError(f"{args.corpus_dir}: no usable utterances found")
    write_manifest(args.out, result.kept)
    print(result.summary(args.corpus))
    print(f"wrote {args.out}")
    if args.strict and result.skipped:
        print(f"asr prepare: --strict: {len(result.skipped)} entries were skipped", file=sys.stderr)
        return 1
    return 0


def _download(args: argparse.Namespace) -> int:
    from .download import download_corpus

    path = download_corpus(args.corpus, args.dest, args.subsets)
    print(path)
    return 0


def _train(args: argparse.Namespace) -> int:
    from .config import load_config
    from .data import read_manifest
    from .train import train

    config = load_config(args.config, args.overrides)
    state = train(config, read_manifest(args.train), read_manifest(args.dev), args.out, resume=args.resume)
    print(f"best dev WER {state.best_wer:.2f}% CER {state.best_cer:.2f}% after {state.step} updates; "
          f"checkpoints in {args.out}")
    return 0


def _load(args: argparse.Namespace):
    import torch

    from .checkpoint import load_model, resolve_device

    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    model, tokenizer, config = load_model(args.model, device)
    batch_seconds = args.batch_seconds or config.decode.batch_seconds
    return model, tokenizer, device, batch_seconds


def _decode(args: argparse.Namespace) -> int:
    from .data import load_utterance_audio, read_manifest
    from .decode import transcribe_waves

    model, tokenizer, device, batch_seconds = _load(args)
    utts = read_manifest(args.manifest)
    rate = model.feature_config.sample_rate
    waves = [load_utterance_audio(u, rate) for u in utts]
    start = time.perf_counter()
    texts = transcribe_waves(model, tokenizer, waves, device, batch_seconds, progress=True)
    seconds = time.perf_counter() - start
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as f:
        for utt, text in zip(utts, texts):
            f.write(f"{utt.id}\t{text}\n")
    audio = sum(w.shape[0] for w in waves) / rate
    print(f"decoded {len(utts)} utterances ({audio / 3600:.2f} h) in {seconds:.1f} s on {device}: "
          f"RTFx {audio / max(seconds, 1e-9):.0f}; wrote {args.out}", file=sys.stderr)
    return 0


def _transcribe(args: argparse.Namespace) -> int:
    from .transcribe import transcribe_files

    model, tokenizer, device, batch_seconds = _load(args)
    results = transcribe_files(model, tokenizer, args.paths, device, batch_seconds, progress=len(args.paths) > 1)
    failed = 0
    for r in results:
        if r.error:
            failed += 1
            print(f"asr transcribe: error: {r.error}", file=sys.stderr)
            if args.json:
                print(json.dumps({"path": r.path, "error": r.error}))
        elif args.json:
            print(json.dumps({"path": r.path, "text": r.text, "duration": round(r.duration, 3)}))
        else:
            print(f"{r.path}\t{r.text}")
    if failed:
        print(f"asr transcribe: {failed} of {len(results)} files could not be transcribed", file=sys.stderr)
        return 1
    return 0


def _score(args: argparse.Namespace) -> int:
    from .score import format_alignments, format_summary, read_texts, score

    report = score(read_texts(args.ref), read_texts(args.hyp))
    summary = format_summary(report, title=f"ref: {args.ref}  hyp: {args.hyp}")
    print(summary)
    alignments = args.alignments or args.hyp.with_name(args.hyp.name + ".align")
    alignments.write_text(format_alignments(report), encoding="utf-8")
    print(f"alignments: {alignments}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(summary + "\n", encoding="utf-8")
    return 0


def _plot(args: argparse.Namespace) -> int:
    from .train import plot_training

    print(plot_training(args.exp_dir, args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The `asr` command: prepare, train, decode, transcribe, score, plot.

Each subcommand parses its arguments and calls one function of the stage module that does the work.
A subcommand is an `add_X(subparsers)` function, which declares its arguments and sets its handler,
next to that handler `_X(args)`; `COMMANDS` lists them and `build_parser` runs each. `asr prepare` and
`asr download` take their corpora, and each corpus its options, from the registry in `asr.corpora`.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

from typing import TYPE_CHECKING

from .decode import DECODERS

if TYPE_CHECKING:
    from typing import Callable

    from .api import Recognizer
    from .config import DecodeConfig
    from .shards import DecodeShare, ShardSummary
    from .training.distributed import DistributedSetup
    from .transcribe import Transcript

EXIT_BAD_INPUT = 2


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser(next((a for a in argv if not a.startswith("-")), None))
    args, extra = parser.parse_known_args(argv)
    if extra and getattr(args, "command", None) == "transcribe" and not any(a.startswith("-") for a in extra):
        # argparse fills a nargs="+" positional once: audio after options ('asr transcribe MODEL.pt
        # --device cpu a.wav', the older form) arrives here.
        args.paths += extra
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if not hasattr(args, "run"):
        parser.print_help()
        return EXIT_BAD_INPUT
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    try:
        return args.run(args) or 0
    except (FileNotFoundError, ValueError, RuntimeError) as e:
        print(f"asr {args.command}: error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT


def entry(argv: list[str] | None = None) -> None:
    """The `asr` console command (and `python -m asr.cli`, `python -m asr.training`): main(argv), then
    exit without tearing the interpreter down. Freeing a loaded model, the LM and the lexicon trie
    object by object took 0.5 s (greedy) to 1.5 s (beam-lm) after the transcript was out, a third of a
    short file's run (issue 27); the OS frees a process's memory at once. Under torchrun it also keeps a
    finished rank alive: torch never frees the gloo process group once DistributedDataParallel has used
    it (destroy_process_group leaves its threads running), and C++ teardown at exit then aborted the
    rank ("terminate called without an active exception", exit -6) when another rank outlived it, in
    about 1 of 7 two-rank runs of a minimal DDP script. Output is flushed and log files closed first;
    where child processes are still running (their owners clean them up at exit) the interpreter exits
    the usual way."""
    import multiprocessing

    code = main(argv)
    if multiprocessing.active_children():
        sys.exit(code)
    logging.shutdown()
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except BrokenPipeError:  # the reader left ('asr transcribe ... | head -1')
        pass
    os._exit(code)


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser of every subcommand, or with `command` (one of COMMAND_NAMES) of that one only: each
    command's parser is built in full (`asr prepare` imports the corpus registry for its corpora's
    options), and `asr transcribe` should not wait for the others'."""
    parser = argparse.ArgumentParser(prog="asr", description="BiLSTM-CTC speech recognition: prepare, train, decode, score.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    for add in COMMANDS:
        if command not in COMMAND_NAMES or COMMAND_NAMES[command] is add:
            add(sub)
    return parser


def add_prepare(sub: argparse._SubParsersAction) -> None:
    """`asr prepare CORPUS`: one subparser per corpus in asr.corpora.CORPORA, with that corpus's options."""
    from .corpora import CORPORA

    p = sub.add_parser("prepare", help="import a corpus into a JSON Lines manifest")
    corpora = p.add_subparsers(dest="corpus", metavar="CORPUS", required=True)
    for corpus in CORPORA.values():
        if corpus.prepare is None:
            continue
        c = corpora.add_parser(corpus.name, help=corpus.help)
        corpus.add_arguments(c)
        c.set_defaults(run=_prepare)


def _prepare(args: argparse.Namespace) -> int:
    from .corpora import CORPORA
    from .data import write_manifest

    result = CORPORA[args.corpus].prepare(args)
    source = getattr(args, "corpus_dir", None) or getattr(args, "data_dir", None) or args.csv
    source = " ".join(map(str, source)) if isinstance(source, list) else source
    rejects = _write_rejects(args.out, result.skipped)
    if not result.kept:
        print(result.summary(args.corpus), file=sys.stderr)
        raise ValueError(f"{source}: no usable utterances found (skipped entries: {rejects})")
    write_manifest(args.out, result.kept)
    print(result.summary(args.corpus))
    print(f"wrote {args.out} ({len(result.kept)} utterances) and {rejects} ({len(result.skipped)} skipped)")
    if args.strict and result.skipped:
        print(f"asr prepare: --strict: {len(result.skipped)} entries were skipped", file=sys.stderr)
        return 1
    return 0


def _write_rejects(manifest: Path, skipped: list[tuple[str, str]]) -> Path:
    """X.jsonl -> X.rejects.jsonl: one {"entry", "category", "reason"} object per skipped entry
    (written, possibly empty, on every run, so that it never describes an older run)."""
    from .corpora import reason_category

    stem = manifest.name[: -len(".jsonl")] if manifest.name.endswith(".jsonl") else manifest.name
    path = manifest.with_name(f"{stem}.rejects.jsonl")
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for entry, reason in skipped:
            f.write(json.dumps({"entry": entry, "category": reason_category(reason), "reason": reason}) + "\n")
    return path


def add_download(sub: argparse._SubParsersAction) -> None:
    """`asr download CORPUS`: the corpora of asr.corpora.CORPORA that have a download."""
    from .corpora import downloadable

    p = sub.add_parser("download", help="download and extract a public corpus")
    p.add_argument("corpus", choices=downloadable())
    p.add_argument("--subsets", nargs="*", default=None,
                   help="LibriSpeech subsets, e.g. dev-clean train-clean-100; librispeech-lm: file names, e.g. 4-gram.arpa.gz")
    p.add_argument("--archive", default=None, help="commonvoice: the downloaded .tar.gz, or its download link")
    p.add_argument("--dest", required=True, type=Path, help="folder for archives and extracted data")
    p.set_defaults(run=_download)


def _download(args: argparse.Namespace) -> int:
    from .corpora import download_corpus

    path = download_corpus(args.corpus, args.dest, args.subsets, archive=args.archive)
    print(path)
    return 0


def add_export(sub: argparse._SubParsersAction) -> None:
    """`asr export kaldi|model|onnx`: a manifest as a Kaldi data directory, a compact checkpoint, an ONNX model."""
    p = sub.add_parser("export", help="write a manifest in another toolkit's format, or a model for inference")
    formats = p.add_subparsers(dest="format", metavar="FORMAT", required=True)
    c = formats.add_parser("kaldi", help="a Kaldi data directory: wav.scp, text, utt2spk, spk2utt, utt2dur[, segments]")
    c.add_argument("manifest", type=Path)
    c.add_argument("data_dir", type=Path)
    c.set_defaults(run=_export)
    c = formats.add_parser("model", help="a compact inference checkpoint: fp16 weights, config, tokenizer, decode settings",
                           description="Write a checkpoint for inference only: learned weights in float16 (buffers "
                           "such as the feature normalizer stay float32), config, tokenizer, and the decode settings "
                           "(its config's, then decode.yaml next to CHECKPOINT, without LM/lexicon paths); no "
                           "optimizer or training state. It loads wherever a checkpoint does (asr transcribe -m FILE).")
    c.add_argument("checkpoint", type=Path, help="checkpoint to export: exp/<name>/best.pt, or one from asr average")
    c.add_argument("--out", required=True, type=Path, help="file to write (.pt)")
    c.add_argument("--dtype", default="float16", choices=["float16", "float32"], help="storage type of the learned weights")
    c.add_argument("--note", default="", help="free text kept in the file's metadata (training data, WER, licence)")
    c.add_argument("--max-mb", type=float, default=0.0,
                   help="fail, writing nothing, if the file would be larger than this many MB (10^6 bytes; 0: no limit)")
    c.set_defaults(run=_export_model)

    c = formats.add_parser("onnx", help="the model from features to CTC log-probs as ONNX, for asr.serving.onnx_runtime (no torch)",
                           description="Export CTCModel.encode (normalized log-mel features, or the frozen Whisper "
                           "encoder's for features.frontend=whisper -> log-probs; for features.frontend=whisper-torch, "
                           "Whisper's log-mel windows -> log-probs, the whole encoder in the graph) as an ONNX "
                           "graph with dynamic batch and time, the feature settings, normalizer and tokenizer (and the "
                           "encoder's identity) in its metadata. Transcribe with it without torch: python -m "
                           "asr.serving.onnx_runtime MODEL.onnx AUDIO... (pip install 'asr[onnx]'; a whisper model also needs "
                           "'asr[pretrained]').")
    c.add_argument("checkpoint", type=Path, help="checkpoint (.pt), e.g. from asr export model")
    c.add_argument("--out", required=True, type=Path, help="file to write (.onnx)")
    c.add_argument("--opset", type=int, default=17, help="ONNX opset version")
    c.add_argument("--int8", action="store_true",
                   help="the weights of matrix products and LSTMs in int8 (onnxruntime's dynamic quantization, per "
                   "channel): a smaller, faster file, slightly less accurate (docs/serving.md)")
    c.set_defaults(run=_export_onnx)


def _export(args: argparse.Namespace) -> int:
    from .data import read_manifest
    from .corpora.kaldi import export_kaldi

    utts = read_manifest(args.manifest)
    export_kaldi(utts, args.data_dir)
    print(f"wrote {len(utts)} utterances as a Kaldi data directory: {args.data_dir}")
    return 0


def _export_model(args: argparse.Namespace) -> int:
    from .checkpoint import export_model

    size, metadata = export_model(args.checkpoint, args.out, args.dtype, args.note, args.max_mb)
    print(f"wrote {args.out}: {size / 1e6:.1f} MB, {metadata['parameters']:,} parameters in {args.dtype}, "
          f"decode settings from {metadata['decode_from']}")
    if metadata["decode_note"]:
        print(f"decode settings {metadata['decode_note']}")
    return 0


def _export_onnx(args: argparse.Namespace) -> int:
    try:
        import onnx  # noqa: F401
    except ImportError as e:
        raise RuntimeError(f"asr export onnx needs the onnx package ({e}); install it with: pip install 'asr[onnx]'") from None
    from .serving.onnx_export import export_onnx

    metadata = export_onnx(args.checkpoint, args.out, args.opset, int8=args.int8)
    feats = metadata["features"]
    if metadata["frontend"] == "whisper":
        described = f"{feats['dim']}-d Whisper-encoder features"
    elif metadata["frontend"] == "whisper-torch":
        described = f"Whisper's {feats['n_mels']}-band log-mel through the encoder in the graph"
    else:
        described = f"{feats['n_mels']} log-mel features"
    print(f"wrote {args.out}: {args.out.stat().st_size / 1e6:.1f} MB{' (int8 weights)' if args.int8 else ''}, {described} at "
          f"{feats['sample_rate']} Hz -> {len(metadata['tokenizer'].get('symbols', [])) or 'BPE'} labels; "
          f"transcribe with: python -m asr.serving.onnx_runtime {args.out} AUDIO...")
    return 0


def add_average(sub: argparse._SubParsersAction) -> None:
    """`asr average`: the mean of several checkpoints' weights."""
    p = sub.add_parser("average", help="average the weights of several checkpoints of one model, e.g. its last epochs",
                       description="Element-wise mean of the weights of checkpoints of one model (same config, "
                       "tokenizer and shapes), written as a checkpoint that loads like any other. Whisper-torch "
                       "models that trained different numbers of encoder blocks (runs from one start) average as "
                       "models training the most, the blocks they left frozen at the encoder's own weights.")
    p.add_argument("checkpoints", nargs="+", help="checkpoints, or a quoted glob such as 'exp/x/epoch*.pt'")
    p.add_argument("--out", required=True, type=Path, help="checkpoint to write (.pt); asr export model compacts it")
    p.add_argument("--weights", type=float, nargs="+", default=None, metavar="W",
                   help="one weight per checkpoint (after glob expansion), scaled to sum to 1 (default: equal)")
    p.set_defaults(run=_average)


def _average(args: argparse.Namespace) -> int:
    from .checkpoint import average_checkpoints, expand_checkpoint_paths, save_checkpoint

    paths = expand_checkpoint_paths(args.checkpoints)
    if any(p.resolve() == args.out.resolve() for p in paths):
        raise ValueError(f"{args.out}: --out is one of the checkpoints to average; choose another file")
    payload = average_checkpoints(paths, args.weights)
    save_checkpoint(args.out, payload)
    if args.weights is None:
        print(f"wrote {args.out}: the average of {len(paths)} checkpoints ({', '.join(str(p) for p in paths)})")
    else:
        parts = ", ".join(f"{share:.3g} x {p}" for share, p in zip(payload["metadata"]["weights"], paths))
        print(f"wrote {args.out}: the weighted average of {len(paths)} checkpoints ({parts})")
    return 0


def add_upgrade_checkpoint(sub: argparse._SubParsersAction) -> None:
    """`asr upgrade-checkpoint`: rewrite an old checkpoint in the safe format."""
    p = sub.add_parser("upgrade-checkpoint", help="convert a checkpoint written by an older asr to the safe format",
                       description="Rewrite a checkpoint whose RNG state holds numpy arrays (last.pt or best.pt "
                       "written by asr before checkpoints became plain data) so that every command loads it. "
                       "It is read as data only, like any checkpoint: no code from the file runs.")
    p.add_argument("checkpoint", type=Path, help="the old checkpoint")
    p.add_argument("--out", required=True, type=Path, help="file to write (may be CHECKPOINT itself)")
    p.set_defaults(run=_upgrade_checkpoint)


def _upgrade_checkpoint(args: argparse.Namespace) -> int:
    from .checkpoint import upgrade_checkpoint

    converted = upgrade_checkpoint(args.checkpoint, args.out)
    print(f"wrote {args.out}: " + (f"converted {', '.join(converted)}" if converted else "nothing to convert"))
    return 0


def _transcribe_model_and_paths(args: argparse.Namespace) -> tuple[Path, list[str]]:
    """transcribe's model and audio: --model; else a first argument ending in .pt or .pth (the form
    'asr transcribe MODEL AUDIO...'); else the default model (asr.transcribe.default_model_path)."""
    from .transcribe import default_model_path

    if not args.paths and args.files_from is None:
        raise ValueError("no audio given: name audio files or folders, or a list of them with --files-from LIST")
    first_is_model = bool(args.paths) and Path(args.paths[0]).suffix.lower() in (".pt", ".pth")
    if args.model is not None:
        if first_is_model:
            raise ValueError(f"two models given: --model {args.model} and {args.paths[0]}")
        return args.model, args.paths
    if first_is_model:
        if len(args.paths) == 1 and args.files_from is None:
            raise ValueError(f"no audio files given after the model {args.paths[0]}")
        return Path(args.paths[0]), args.paths[1:]
    model = default_model_path()
    print(f"asr transcribe: model {model}", file=sys.stderr)
    return model, args.paths


def add_train(sub: argparse._SubParsersAction) -> None:
    """`asr train`: train a model from manifests and a config."""
    p = sub.add_parser("train", help="train a model", description="Train a BiLSTM-CTC model. Extra arguments "
                       "section.key=value override the config, e.g. train.lr=1e-3 model.num_layers=4.")
    p.add_argument("--config", type=Path, default=None, help="YAML config (conf/*.yaml); defaults if omitted")
    p.add_argument("--train", required=True, type=Path, nargs="+", help="training manifest(s), used together")
    p.add_argument("--dev", required=True, type=Path, nargs="+",
                   help="dev manifest(s), each scored after every epoch; best.pt by the WER over all of them")
    p.add_argument("--out", required=True, type=Path, help="experiment folder (checkpoints, logs)")
    p.add_argument("--resume", action="store_true",
                   help="continue from <out>/last.pt; refused if the config differs beyond the keys safe to change "
                        "(asr.training.RESUME_SAFE_KEYS: train.max_minutes, train.max_steps, train.epochs upwards, ...)")
    p.add_argument("--force-resume", action="store_true",
                   help="--resume, continuing with the new values of changed train/specaug keys (never model, "
                        "features or tokenizer ones)")
    p.add_argument("--overwrite", action="store_true",
                   help="start again in an --out folder that holds a run: deletes its checkpoints, metrics.jsonl and "
                        "logs first (without --resume or --overwrite such a folder is refused)")
    p.add_argument("overrides", nargs="*", metavar="section.key=value")
    p.set_defaults(run=_train)


def _train(args: argparse.Namespace) -> int:
    from .config import load_config
    from .data import read_manifest
    from .training import distributed_setup_from_env, train
    from .training.resume import check_out_dir

    config = load_config(args.config, args.overrides)
    check_out_dir(args.out, args.resume or args.force_resume, args.overwrite)  # before the manifests are read
    train_utts, seen = [], {}
    for path in args.train:
        utts = read_manifest(path, need_text=True)
        if not utts:
            raise ValueError(f"{path}: the training manifest holds no utterances")
        for u in utts:
            if seen.setdefault(u.id, path) != path:
                raise ValueError(f"{path}: utterance id {u.id!r} is also in {seen[u.id]}; ids must be unique "
                                 "across training manifests")
            train_utts.append(u)
    state = train(config, train_utts, _dev_sets(args.dev), args.out, resume=args.resume or args.force_resume,
                  force_resume=args.force_resume, overwrite=args.overwrite)
    if distributed_setup_from_env().is_main:  # under torchrun, one summary (rank 0's)
        print(f"best dev WER {state.best_wer:.2f}% CER {state.best_cer:.2f}% after {state.step} updates; "
              f"checkpoints in {args.out}")
    return 0


def _dev_sets(paths: list[Path]) -> dict:
    """Dev manifests by name: the file's stem, or folder/stem where two stems are alike."""
    from .data import read_manifest

    stems = [p.stem for p in paths]
    names = [f"{p.parent.name}/{p.stem}" if stems.count(p.stem) > 1 else p.stem for p in paths]
    if len(set(names)) < len(names):
        raise ValueError(f"dev manifests given twice: {' '.join(map(str, paths))}")
    return {name: read_manifest(path, need_text=True) for name, path in zip(names, paths)}


def _recognizer(args: argparse.Namespace, nbest: int = 1) -> Recognizer:
    """The model of `args.model` with its settings resolved as the API resolves them (asr.api.Recognizer:
    checkpoint config < decode.yaml or --decode-config < the options given on the command line)."""
    import torch

    from .api import Recognizer

    if args.threads:
        torch.set_num_threads(args.threads)
    from .decode import close_early_searches

    recognizer = Recognizer(args.model, args.device, args.decode_config_file, nbest=nbest, **_decode_options(args))
    close_early_searches()  # any the Recognizer's decoder did not take over
    return recognizer


def _decode_options(args: argparse.Namespace) -> dict:
    """The decode options given on the command line (None: not given)."""
    return dict(decoder=args.decoder, beam_size=args.beam_size, lm=args.lm, lexicon=args.lexicon,
                lm_weight=args.lm_weight, word_score=args.word_score, batch_seconds=args.batch_seconds,
                chunk_seconds=getattr(args, "chunk_seconds", None), chunk_overlap=getattr(args, "chunk_overlap", None))


def _start_search_early(args: argparse.Namespace, nbest: int = 1) -> None:
    """With beam-lm, begin building its search (the LM, the lexicon trie: longer than a short file's
    transcription) in a process of its own before torch is imported; the Recognizer's decoder takes
    it over (asr.decode.start_search_early). Must run before anything here imports torch."""
    from .decode import start_search_early

    start_search_early(args.model, args.decode_config_file, nbest, **_decode_options(args))


def _add_inference_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--batch-seconds", type=float, default=None, help="padded audio seconds per batch (default: from the model's config)")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads of the model, and beam-lm's decoding processes (default: torch's thread count)")
    # Decoding; None means: from decode.yaml next to the checkpoint if present, else the checkpoint's config.
    p.add_argument("--decoder", default=None, choices=DECODERS,
                   help="greedy; beam: CTC prefix beam search without LM; beam-lm: flashlight beam search with a "
                        "KenLM n-gram (pip install 'asr[lm]'); gpu-beam: torchaudio's CUDA beam search (no LM)")
    p.add_argument("--beam-size", type=int, default=None, help="hypotheses kept per frame (beam, beam-lm, gpu-beam)")
    p.add_argument("--lm", default=None, help="beam-lm: KenLM model, ARPA or binary (asr lm build)")
    p.add_argument("--lexicon", default=None, help="beam-lm: spelling lexicon (asr lm lexicon); omitted: lexicon-free")
    p.add_argument("--lm-weight", type=float, default=None, help="beam-lm: weight of the LM log-probability")
    p.add_argument("--word-score", type=float, default=None, help="beam-lm: score added per word")
    p.add_argument("--decode-config", type=Path, default=None, dest="decode_config_file",
                   help="decode options (YAML, e.g. written by scripts/tune_decoder.py --out) instead of the "
                        "decode.yaml next to the checkpoint; options given here still win")
    if p.prog.split()[-1] == "transcribe":
        p.add_argument("--timestamps", action="store_true", help="word start/end seconds from a CTC forced alignment")
        p.add_argument("--format", default=None, choices=["txt", "json", "srt", "vtt"],
                       help="txt: 'path<TAB>text' (with --timestamps 'path<TAB>start<TAB>end<TAB>word' per word); "
                            "json: one object per file; srt/vtt: subtitles (implies --timestamps)")
        p.add_argument("--nbest", type=int, default=1, help="json: the K best hypotheses with their scores")
        p.add_argument("--out-dir", type=Path, default=None,
                       help="write one file per input here (.txt, .json, .srt or .vtt by --format, holding what would "
                            "be printed for it), at the input's path relative to the folder holding all inputs "
                            "(a/x.wav, b/x.wav -> a/x.srt, b/x.srt); files already there are refused before any work")
        p.add_argument("--overwrite", action="store_true", help="--out-dir: replace output files that already exist")
        p.add_argument("--quiet", action="store_true", help="no progress bars (they appear only when stderr is a terminal)")


def add_decode(sub: argparse._SubParsersAction) -> None:
    """`asr decode`: decode a manifest with a trained model."""
    p = sub.add_parser("decode", help="decode a manifest with a trained model")
    p.add_argument("model", type=Path, help="checkpoint (.pt): exp/<name>/best.pt, or a file from asr export model / asr average")
    p.add_argument("manifest", type=Path)
    p.add_argument("--out", required=True, type=Path, help="hypotheses, one 'id<TAB>text' per line")
    _add_inference_options(p)
    p.set_defaults(run=_decode)


def _decode(args: argparse.Namespace) -> int:
    from .audio import AudioError
    from .data import load_utterance_audio, read_manifest
    from .shards import consecutive_groups
    from .transcribe import Transcript

    _start_search_early(args)
    setup = _rank_setup(args)
    recognizer = _recognizer(args).ready()  # the decoder built (an LM loaded) before the clock starts
    utts = read_manifest(args.manifest)
    rate = recognizer.sample_rate

    def decode(positions: list[int], done) -> None:
        for group in consecutive_groups(positions, [utts[i].duration for i in positions], DECODE_GROUP_SECONDS):
            inputs, read = [], []  # waveforms, and the manifest positions they belong to
            for i in group:
                try:
                    inputs.append((load_utterance_audio(utts[i], rate).numpy(), rate))
                    read.append(i)
                except AudioError as e:
                    done([(i, Transcript(str(utts[i].audio), error=str(e)))])

            def read_done(finished: list[tuple[int, Transcript]], read: list[int] = read) -> None:
                for j, t in finished:
                    t.path = str(utts[read[j]].audio)  # the pipeline was given samples: name their file
                done([(read[j], t) for j, t in finished])

            recognizer.pipeline.transcribe(inputs, progress=setup.is_main, on_done=read_done)

    def hypothesis_line(i: int, r: Transcript) -> str:
        if r.error or r.warning:
            print(f"asr decode: {utts[i].id}: {r.error or r.warning}", file=sys.stderr)
        return f"{utts[i].id}\t{r.text}\n"

    summary = _run_shards(args, recognizer, setup, [u.id for u in utts], lambda i: utts[i].duration, decode,
                          hypothesis_line, args.out)
    if not summary.is_main:
        return 0
    print(f"decoded with {_describe(recognizer.settings)} on {recognizer.device}: {summary.describe('utterances')}; "
          f"wrote {args.out}" + (f" and {_rejects_note(args.out, False)}" if summary.failed else ""), file=sys.stderr)
    return 1 if summary.failed else 0


# asr decode holds the waveforms of at most this much audio at a time (float32 at 16 kHz: 230 MB an
# hour); a manifest longer than that is decoded in consecutive groups, each batched as usual.
DECODE_GROUP_SECONDS = 3600.0


def _rank_setup(args: argparse.Namespace) -> DistributedSetup:
    """Where this process stands under torchrun (a plain run: rank 0 of 1), with the rank's share of
    the machine: --device auto/cuda becomes one GPU per local rank (cuda:LOCAL_RANK); without
    --threads, the CPU cores this process may use are split evenly among the ranks on this machine."""
    import os

    import torch

    from .training.distributed import distributed_setup_from_env

    setup = distributed_setup_from_env()
    if not setup.active:
        return setup
    if args.device in ("auto", "cuda") and torch.cuda.is_available():
        args.device = f"cuda:{setup.local_rank % torch.cuda.device_count()}"
    if not args.threads:
        local_ranks = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
        args.threads = max(1, len(os.sched_getaffinity(0)) // max(local_ranks, 1))
    return setup


def _run_shards(args: argparse.Namespace, recognizer: Recognizer, setup: DistributedSetup, keys: list[str],
                duration_of: Callable[[int], float], decode: DecodeShare, output_of: Callable[[int, Transcript], str],
                out: Path | None, out_dir: Path | None = None, output_settings: dict | None = None) -> ShardSummary:
    """asr.shards.run_sharded with this command's output: --out FILE (records in FILE.parts/), or
    --out-dir DIR of per-file outputs (records in DIR.parts/), or neither (stdout; nothing kept).
    Rank 0 writes the merged output to FILE (atomically) or stdout, and the rejects file."""
    import os
    from dataclasses import asdict

    from .files import write_text_atomic
    from .shards import parts_folder, rejects_path, run_sharded, write_rejects

    target, is_folder = (out, False) if out is not None else (out_dir, True)
    folder = parts_folder(target, is_folder) if target is not None else None
    model = os.stat(recognizer.path)
    settings = {"command": args.command, "model": str(Path(recognizer.path).resolve()), "model_bytes": model.st_size,
                "model_mtime_ns": model.st_mtime_ns, "decode": asdict(recognizer.settings), **(output_settings or {})}
    try:
        summary = run_sharded(keys, duration_of, decode, output_of, folder, settings, setup)
    finally:
        recognizer.close()  # beam-lm's search processes: stopped now, not left to the interpreter's exit
    if summary.note:
        print(f"asr {args.command}: {summary.note}", file=sys.stderr)
    if summary.is_main:
        if out is not None:
            write_text_atomic(out, summary.output)
        else:
            sys.stdout.write(summary.output)
        if target is not None:
            write_rejects(rejects_path(target, is_folder), summary.rejects)
    return summary


def _finished_keys(out_dir: Path) -> set[str]:
    """The inputs an earlier run into --out-dir transcribed (its records in DIR.parts/): their output
    files are its own, so a rerun resumes past them instead of refusing them as files already there."""
    from .shards import parts_folder, read_records

    return {key for key, record in read_records(parts_folder(out_dir, is_folder=True)).items() if not record.get("error")}


def _rejects_note(target: Path, is_folder: bool) -> str:
    from .shards import rejects_path

    return f"the failures with their reasons in {rejects_path(target, is_folder)}"


TRANSCRIBE_HELP = ("Transcribe audio files or folders with --model, or with the default model: $ASR_MODEL, else "
                   "models/en-whisper-tiny-bilstm-ctc.pt of the repository. The older form 'asr transcribe MODEL.pt "
                   "AUDIO...' still works.")


def add_transcribe(sub: argparse._SubParsersAction) -> None:
    """`asr transcribe`: transcribe audio files or folders."""
    p = sub.add_parser("transcribe", help="transcribe audio files or folders", description=TRANSCRIBE_HELP)
    p.add_argument("paths", nargs="*", metavar="AUDIO",
                   help="audio files or folders (a first argument ending in .pt is the model)")
    p.add_argument("--files-from", type=Path, default=None, metavar="LIST",
                   help="also transcribe the files (or folders) listed in this text file, one per line")
    p.add_argument("--out", type=Path, default=None,
                   help="write the output (txt, json, or one file's srt/vtt) to this file instead of stdout; "
                        "resumable: a rerun skips the files already done (their records are in OUT.parts/)")
    p.add_argument("-m", "--model", type=Path, default=None,
                   help="checkpoint (.pt); default: $ASR_MODEL, else the repository's models/en-whisper-tiny-bilstm-ctc.pt")
    p.add_argument("--json", action="store_true", help="one JSON object per file instead of 'path<TAB>text'")
    p.add_argument("--chunk-seconds", type=float, default=None,
                   help="decode files longer than this in overlapping chunks, in bounded memory (default 30; 0: never)")
    p.add_argument("--chunk-overlap", type=float, default=None, help="seconds shared by consecutive chunks (default 4)")
    _add_inference_options(p)
    p.set_defaults(run=_transcribe)


def _transcribe(args: argparse.Namespace) -> int:
    from .files import write_text_atomic
    from .formats import format_srt, format_vtt, format_word_lines, json_line, transcript_json
    from .transcribe import Transcript, existing_outputs, expand_paths, header_seconds, output_paths

    args.model, args.paths = _transcribe_model_and_paths(args)
    if args.files_from is not None:
        args.paths += _read_file_list(args.files_from)
    output_format = args.format or ("json" if args.json else "txt")
    subtitles = output_format in ("srt", "vtt")
    timestamps = args.timestamps or subtitles
    files = expand_paths(args.paths)
    if subtitles and args.out_dir is None and len(files) > 1:
        raise ValueError(f"--format {output_format} with several files needs --out-dir")
    outputs = None
    if args.out_dir is not None:  # name clashes and files already there: refused before any work
        outputs = output_paths(files, args.out_dir, "." + output_format)
        done_before = _finished_keys(args.out_dir)  # written by an earlier run into this folder: resumed, not clashing
        clashing = [] if args.overwrite else existing_outputs(p for k, p in outputs.items() if k not in done_before)
        if clashing:
            named = ", ".join(map(str, clashing[:3])) + (f" and {len(clashing) - 3} more" if len(clashing) > 3 else "")
            raise ValueError(f"--out-dir {args.out_dir}: {len(clashing)} output file(s) already exist ({named}); "
                             "nothing was transcribed. Add --overwrite to replace them, or choose another --out-dir")
    _start_search_early(args, nbest=max(args.nbest, 1))
    setup = _rank_setup(args)
    recognizer = _recognizer(args, nbest=max(args.nbest, 1))
    progress = show_progress(args) and setup.is_main

    def decode(positions: list[int], done) -> None:
        recognizer.pipeline.transcribe([files[i] for i in positions], timestamps=timestamps, progress=progress,
                                       on_done=lambda finished: done([(positions[j], t) for j, t in finished]))

    def output_of(i: int, r: Transcript) -> str:
        """What a one-process run prints for this file (with --out-dir: writing its output file first, then its path)."""
        if r.warning:  # read but not transcribed (too short): named on stderr; its empty transcript is still printed
            print(f"asr transcribe: warning: {r.warning}", file=sys.stderr)
        if r.error:
            print(f"asr transcribe: error: {r.error}", file=sys.stderr)
        if output_format == "json":
            text = json_line(transcript_json(r, nbest=args.nbest > 1)) + "\n"  # a failure too, on stdout or --out
        elif r.error:
            return ""
        elif subtitles:
            text = format_srt(r.words) if output_format == "srt" else format_vtt(r.words)
        elif timestamps:
            text = format_word_lines(r.path, r.words)
        else:
            text = f"{r.path}\t{r.text}\n"
        if outputs is None:
            return text
        if r.error:  # named on stderr and in the rejects file; no output file
            return ""
        write_text_atomic(outputs[r.path], text)
        return f"{outputs[r.path]}\n"

    out_dir = args.out_dir if outputs is not None else None
    summary = _run_shards(args, recognizer, setup, [str(f) for f in files], lambda i: header_seconds(files[i]),
                          decode, output_of, args.out,
                          out_dir, {"format": output_format, "timestamps": timestamps, "nbest": args.nbest})
    if not summary.is_main:
        return 0
    resumable = args.out is not None or out_dir is not None
    if resumable or setup.world_size > 1:
        print(f"asr transcribe: {summary.describe()}", file=sys.stderr)
    if summary.failed:
        where = f"; {_rejects_note(args.out or out_dir, args.out is None)}" if resumable else ""
        print(f"asr transcribe: {summary.failed} of {summary.inputs} files could not be transcribed{where}", file=sys.stderr)
        return 1
    return 0


def _read_file_list(path: Path) -> list[str]:
    """--files-from: one audio file or folder per line, as written (relative to the working folder);
    blank lines and lines starting with # are skipped."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise FileNotFoundError(f"{path}: cannot read the list of files ({e.strerror})") from None
    except UnicodeDecodeError:
        raise ValueError(f"{path}: the list of files is not UTF-8 text (one audio path per line)") from None
    return [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]


def show_progress(args: argparse.Namespace) -> bool:
    """Progress bars (tqdm, on stderr) only for a person watching: stderr is a terminal and no --quiet."""
    return not getattr(args, "quiet", False) and sys.stderr.isatty()


def _describe(settings: DecodeConfig) -> str:
    if settings.decoder == "greedy":
        return "greedy"
    text = f"{settings.decoder} (beam {settings.beam_size}"
    if settings.decoder == "beam-lm":
        text += (f", lm {settings.lm or 'none'}, lexicon {settings.lexicon or 'none'}, "
                 f"lm_weight {settings.lm_weight:g}, word_score {settings.word_score:g}")
    return text + ")"


def add_serve(sub: argparse._SubParsersAction) -> None:
    """`asr serve`: the HTTP server."""
    p = sub.add_parser("serve", help="HTTP server: OpenAI-style /v1/audio/transcriptions, /health and a web page",
                       description="Serve a model over HTTP (Starlette on uvicorn; pip install 'asr[serve]'): POST "
                       "/v1/audio/transcriptions takes the OpenAI audio API's multipart request (file, response_format "
                       "json|text|srt|vtt|verbose_json), GET /health, and GET / is a page to upload or record audio. Before "
                       "listening beyond this machine (--host 0.0.0.0), set an API key (--api-key or $ASR_API_KEY).")
    p.add_argument("-m", "--model", type=Path, default=None,
                   help="checkpoint (.pt); default: $ASR_MODEL, else the repository's models/en-whisper-tiny-bilstm-ctc.pt")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads for the model, and beam-lm's decoding processes (default: torch's thread count)")
    p.add_argument("--decoder", default=None, choices=DECODERS,
                   help="default: the model's decode settings (its config, then decode.yaml next to it)")
    p.add_argument("--max-batch", type=int, default=8, help="requests transcribed together (1: no batching)")
    p.add_argument("--batch-wait-ms", type=float, default=5.0, help="how long a batch waits for more requests")
    p.add_argument("--queue-size", type=int, default=64, help="requests waiting for the model; more get 503")
    p.add_argument("--max-upload-mb", type=float, default=25.0, help="largest request body (413 over it)")
    p.add_argument("--max-audio-seconds", type=float, default=600.0, help="longest audio accepted (400 over it)")
    p.add_argument("--max-samples", type=int, default=57_600_000,
                   help="most decoded samples (channels x frames) per request, checked from the file's header before "
                        "decoding (413 over it); default: 600 s of 48 kHz stereo, 230 MB as float32")
    p.add_argument("--api-key", default=None,
                   help="require 'Authorization: Bearer KEY' on /v1/ requests (401 otherwise), as OpenAI clients send "
                        "it; default: $ASR_API_KEY (preferable: a command line is visible to other users)")
    p.add_argument("--allow-origin", action="append", default=[], metavar="ORIGIN",
                   help="a web origin (e.g. https://app.example:8443, or '*') whose pages may call the API; "
                        "repeatable. Requests from other origins' pages are refused (403)")
    p.add_argument("--allow-host", action="append", default=[], metavar="NAME",
                   help="on loopback without an API key only requests whose Host is localhost, 127.0.0.1 or ::1 are "
                        "answered (against DNS rebinding); also this name, e.g. a reverse proxy's. Repeatable")
    p.add_argument("--header-timeout", type=float, default=10.0,
                   help="seconds a connection has to send a request's headers (408 and closed after; 0: no limit)")
    p.add_argument("--body-timeout", type=float, default=120.0,
                   help="seconds a request has to send its body after its headers (408 and closed after; 0: no limit)")
    p.set_defaults(run=_serve)


def _serve(args: argparse.Namespace) -> int:
    try:
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as e:
        raise RuntimeError(f"asr serve needs Starlette and uvicorn ({e}); install them with: pip install 'asr[serve]'") from None
    import torch

    from .api import load
    from .serving.http import ServeConfig, bind_socket, is_loopback, serve
    from .transcribe import default_model_path

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.max_batch < 1 or args.queue_size < 1 or args.max_samples < 1:
        raise ValueError("--max-batch, --queue-size and --max-samples must be at least 1")
    if args.header_timeout < 0 or args.body_timeout < 0:
        raise ValueError("--header-timeout and --body-timeout must be 0 (no limit) or more")
    api_key = args.api_key if args.api_key is not None else os.environ.get("ASR_API_KEY", "")
    config = ServeConfig(max_upload_mb=args.max_upload_mb, max_audio_seconds=args.max_audio_seconds,
                         max_batch=args.max_batch, batch_wait_ms=args.batch_wait_ms, queue_size=args.queue_size,
                         max_samples=args.max_samples, api_key=api_key,
                         allow_origins=tuple(o.rstrip("/") for o in args.allow_origin),
                         loopback_names_only=is_loopback(args.host) and not api_key, allow_hosts=tuple(args.allow_host),
                         header_timeout=args.header_timeout, body_timeout=args.body_timeout)
    if not is_loopback(args.host) and not api_key:
        print(f"asr serve: warning: listening on {args.host}, beyond this machine, without an API key: anyone who can "
              "reach this port can use the server. Set --api-key or $ASR_API_KEY", file=sys.stderr)
    sock = bind_socket(args.host, args.port)  # a port in use is reported now, not after the model has loaded
    model_path = args.model or default_model_path()
    recognizer = load(model_path, args.device, decoder=args.decoder)
    print(f"asr serve: model {model_path} on {recognizer.device}; http://{args.host}:{args.port}/"
          + (" (API key required)" if api_key else ""), file=sys.stderr)
    serve(recognizer, args.host, args.port, config, model_name=Path(model_path).name, sock=sock)
    return 0


def add_lm(sub: argparse._SubParsersAction) -> None:
    """`asr lm build|binary|lexicon|perplexity`: word n-gram language models for beam-lm decoding."""
    p = sub.add_parser("lm", help="word n-gram language models for beam-lm decoding")
    lm = p.add_subparsers(dest="lm_command", metavar="LM_COMMAND", required=True)
    c = lm.add_parser("build", help="interpolated modified Kneser-Ney n-gram from text, written as ARPA")
    c.add_argument("text", type=Path, nargs="+",
                   help="text files, one sentence per line (.gz read as gzip), or manifests (.jsonl: their "
                        "transcripts), used together; normalized like transcripts")
    c.add_argument("--order", type=int, default=3, help="n-gram order, e.g. 3 or 4")
    c.add_argument("--out", required=True, type=Path, help="ARPA file to write")
    c.add_argument("--prune", type=int, nargs="+", default=None, metavar="COUNT",
                   help="per-order count thresholds from unigrams on, e.g. 0 0 1: drop 3-grams seen once (last repeats)")
    c.add_argument("--prune-entropy", type=float, default=0.0, metavar="THRESHOLD",
                   help="then drop n-grams whose removal raises perplexity by a relative amount below THRESHOLD "
                        "(Stolcke pruning, SRILM's -prune; LibriSpeech's pruned LMs used 1e-7 and 3e-7)")
    c.add_argument("--vocab", type=Path, nargs="+", default=None,
                   help="word lists (or ARPA files, or manifests: their words), joined; other words become <unk>")
    c.add_argument("--max-lines", type=int, default=0, help="read only the first N lines of each text (0: all)")
    c.add_argument("--quiet", action="store_true", help="no progress bar (it appears only when stderr is a terminal)")
    c.set_defaults(run=_lm_build)
    c = lm.add_parser("binary", help="an ARPA model in KenLM's binary trie format: loads in a fraction of a second, "
                                     "decodes the same (compiles KenLM's build_binary once if needed)")
    c.add_argument("arpa", type=Path, help="ARPA file (.arpa or .arpa.gz)")
    c.add_argument("--out", required=True, type=Path, help="binary file to write, e.g. models/en-3gram.bin")
    c.add_argument("--kenlm-source", type=Path, default=None,
                   help="the kenlm sdist (.tar.gz) or its folder to compile build_binary from; default: pip downloads it")
    c.set_defaults(run=_lm_binary)
    c = lm.add_parser("lexicon", help="spelling lexicon for flashlight: 'word<TAB>w o r d |' per word")
    c.add_argument("vocab", type=Path, help="word list, one per line, or an ARPA file (its unigrams)")
    c.add_argument("--out", required=True, type=Path)
    c.add_argument("--word-separator", default=None,
                   help="token ending each spelling (default '|'; '' for models that never emit a space, e.g. isolated words)")
    c.add_argument("--model", type=Path, default=None,
                   help="spell words in this checkpoint's units (BPE pieces, or characters + '|') instead of characters")
    c.set_defaults(run=_lm_lexicon)
    c = lm.add_parser("perplexity", help="per-word perplexity of text under an ARPA model (KenLM's convention)")
    c.add_argument("lm", type=Path, help="ARPA file (.arpa or .arpa.gz)")
    c.add_argument("text", type=Path, help="a manifest (.jsonl: its transcripts) or text, one sentence per line")
    c.set_defaults(run=_lm_perplexity)


def _lm_build(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from .lm import build_ngram_model, iter_text, read_vocab, write_arpa

    start = time.perf_counter()
    vocab = list(dict.fromkeys(w for path in args.vocab for w in read_vocab(path))) if args.vocab else None
    names = ", ".join(path.name for path in args.text)
    lines = tqdm((line for path in args.text for line in iter_text(path, args.max_lines)), desc=f"reading {names}",
                 unit=" lines", disable=not show_progress(args), mininterval=1.0, unit_scale=True)
    model = build_ngram_model(lines, args.order, vocab, args.prune or (), prune_entropy=args.prune_entropy)
    write_arpa(model, args.out)
    sizes = ", ".join(f"{n}-grams {len(t.word)}" for n, t in enumerate(model.orders, 1))
    print(f"wrote {args.out} ({sizes}) in {time.perf_counter() - start:.0f} s")
    return 0


def _lm_binary(args: argparse.Namespace) -> int:
    from .lm import compile_build_binary, find_build_binary, write_kenlm_binary

    start = time.perf_counter()
    tool = find_build_binary()
    if tool is None:
        print("compiling KenLM's build_binary (once; about a minute)", file=sys.stderr)
        tool = compile_build_binary(args.kenlm_source)
        print(f"compiled {tool}", file=sys.stderr)
    write_kenlm_binary(args.arpa, args.out, tool)
    size = args.out.stat().st_size / 1e6
    print(f"wrote {args.out} ({size:.1f} MB, KenLM binary trie) in {time.perf_counter() - start:.0f} s")
    return 0


def _lm_perplexity(args: argparse.Namespace) -> int:
    from .data import read_manifest
    from .lm import iter_text, perplexity

    if args.text.suffix == ".jsonl":
        sentences = [u.text for u in read_manifest(args.text, need_text=True)]
    else:
        sentences = list(iter_text(args.text))
    result = perplexity(args.lm, sentences)
    print(f"{args.text}: perplexity {result['perplexity']:.1f} over {result['words']} words and "
          f"{result['sentences']} sentences (</s> counted), OOV rate {100 * result['oov_rate']:.2f}% ({args.lm})")
    return 0


def _lm_lexicon(args: argparse.Namespace) -> int:
    from .lm import read_vocab, write_lexicon

    spell = None
    if args.model is not None:
        from .checkpoint import read_checkpoint
        from .text import tokenizer_from_dict

        if args.word_separator is not None:
            raise ValueError("--word-separator and --model exclude each other: the model's tokenizer decides the spelling")
        spell = tokenizer_from_dict(read_checkpoint(args.model)["tokenizer"]).spell
    separator = "|" if args.word_separator is None else args.word_separator
    count = write_lexicon(read_vocab(args.vocab), args.out, separator, spell=spell)
    print(f"wrote {args.out} ({count} words)")
    return 0


def add_score(sub: argparse._SubParsersAction) -> None:
    """`asr score`: WER and CER of hypotheses against references."""
    p = sub.add_parser("score", help="WER and CER of hypotheses against references")
    p.add_argument("ref", type=Path, help="manifest or 'id<TAB>text' file")
    p.add_argument("hyp", type=Path, help="manifest or 'id<TAB>text' file")
    p.add_argument("--alignments", type=Path, default=None, help="per-utterance alignments (default: HYP.align)")
    p.add_argument("--out", type=Path, default=None, help="also write the summary here")
    p.add_argument("--compare", type=Path, default=None, metavar="HYP_B",
                   help="another system's hypotheses of the same references: print B - A (A: HYP) with its "
                        "95%% paired-bootstrap interval, for WER and CER")
    p.add_argument("--resamples", type=int, default=1000, help="bootstrap resamples for --compare")
    p.add_argument("--seed", type=int, default=0, help="the resamples' seed for --compare")
    p.add_argument("--errors", type=int, default=0, metavar="N",
                   help="also list HYP's N most frequent substitutions, deletions, insertions and most often "
                        "wrong reference words (sclite's detailed report)")
    p.set_defaults(run=_score)


def _score(args: argparse.Namespace) -> int:
    from .score import (compare, format_alignments, format_comparison, format_errors, format_summary, read_texts, score,
                        tally_errors)

    refs = read_texts(args.ref)
    report = score(refs, read_texts(args.hyp))
    summary = format_summary(report, title=f"ref: {args.ref}  hyp: {args.hyp}")
    if args.compare:
        other = score(refs, read_texts(args.compare))
        summary += "\n" + format_summary(other, title=f"ref: {args.ref}  hyp: {args.compare}")
        summary += "\n" + format_comparison(compare(report, other, args.resamples, args.seed), str(args.hyp),
                                             str(args.compare))
    if args.errors > 0:
        summary += f"\nmost frequent word errors of {args.hyp}:\n" + format_errors(tally_errors(report), args.errors)
    print(summary)
    alignments = args.alignments or args.hyp.with_name(args.hyp.name + ".align")
    alignments.write_text(format_alignments(report), encoding="utf-8")
    print(f"alignments: {alignments}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(summary + "\n", encoding="utf-8")
    return 0


def add_split(sub: argparse._SubParsersAction) -> None:
    """`asr split`: hold out some speakers' utterances."""
    p = sub.add_parser("split", help="hold out the utterances of some speakers, e.g. a dev set from a training set")
    p.add_argument("manifest", type=Path)
    p.add_argument("--held-out-speakers", type=int, required=True, help="how many speakers to hold out")
    p.add_argument("--seed", type=int, default=0, help="which speakers are drawn")
    p.add_argument("--out-rest", required=True, type=Path, help="manifest of the other speakers' utterances")
    p.add_argument("--out-held", required=True, type=Path, help="manifest of the held-out speakers' utterances")
    p.set_defaults(run=_split)


def _split(args: argparse.Namespace) -> int:
    from .data import hold_out_speakers, read_manifest, total_hours, write_manifest

    rest, held = hold_out_speakers(read_manifest(args.manifest), args.held_out_speakers, args.seed)
    write_manifest(args.out_rest, rest)
    write_manifest(args.out_held, held)
    for path, utts in ((args.out_rest, rest), (args.out_held, held)):
        print(f"wrote {path}: {len(utts)} utterances, {len({u.speaker for u in utts})} speakers, "
              f"{total_hours(utts):.2f} h")
    return 0


def add_plot(sub: argparse._SubParsersAction) -> None:
    """`asr plot`: training curves of an experiment."""
    p = sub.add_parser("plot", help="plot loss, gradient norm and dev WER of an experiment to PNG")
    p.add_argument("exp_dir", type=Path)
    p.add_argument("--out", type=Path, default=None, help="PNG path (default: EXP_DIR/training.png)")
    p.set_defaults(run=_plot)


def _plot(args: argparse.Namespace) -> int:
    from .training import plot_training

    print(plot_training(args.exp_dir, args.out))
    return 0


# The subcommands in the order `asr --help` lists them; each adds its parser and sets its handler.
COMMANDS = (add_prepare, add_download, add_export, add_average, add_upgrade_checkpoint, add_train, add_decode,
            add_transcribe, add_lm, add_score, add_split, add_serve, add_plot)
COMMAND_NAMES = {add.__name__[len("add_"):].replace("_", "-"): add for add in COMMANDS}


if __name__ == "__main__":
    entry()

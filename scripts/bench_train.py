#!/usr/bin/env python
"""Training throughput of the project's loop against the hardware ceiling, in one process:

    python scripts/bench_train.py --config conf/librispeech.yaml --train recipes/librispeech/data/train.jsonl \\
        --steps 200 --device cuda --json bench_train.json
    python scripts/bench_train.py --config conf/librispeech_small.yaml --train data/train.jsonl --steps 40 \\
        --device cpu train.num_workers=1                       # trailing section.key=value overrides

1. The real loop: `asr.training.train` with the config, on the real audio of the training manifest, for
   `--steps` updates (`train.max_steps`) into a temporary folder. Its throughput comes from the
   "train" records of metrics.jsonl after the first one: start-up (audio preload, normalizer
   estimation) is outside every window, and the first window (DataLoader workers starting, cuDNN
   plans, allocator growth) is the warm-up.
2. The ceiling: a bare recurrent stack (the config's cell, layers, hidden size, direction count and
   dropout; input size = what the model's subsampler outputs), a Linear to the vocabulary, CTC loss
   and an AdamW step (fused on CUDA; bf16 autocast on CUDA when train.precision is bf16), on
   device-resident random tensors with the shapes of the same batches in the same order: the batch
   list of asr.data.BucketBatchSampler over the manifest (train.max_batch_seconds,
   train.max_batch_size, train.seed), each batch padded to its longest utterance in subsampled
   frames, with the real label lengths of its transcripts. It warms up on the batches of the real
   loop's first window and is timed on the batches the real loop was timed on. No feature
   extraction, no data loading, no sequence packing: what the recurrent layers alone cost. (Its
   shapes come from the manifest's durations: with train.speed_perturb the real loop's differ.)

Both throughputs are audio-hours per device-hour (seconds of training audio per second of wall
time; on a CPU the "device-hour" is the process's wall-hour). The ratio real / ceiling says how much
of the hardware the loop uses. Prints `name: value` lines and a markdown table row; --json writes
the same figures to a file.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from asr.checkpoint import resolve_device  # noqa: E402
from asr.config import Config, load_config  # noqa: E402
from asr.data import BucketBatchSampler, Utterance, read_manifest  # noqa: E402
from asr.model import CTCModel  # noqa: E402
from asr.text import Tokenizer, build_tokenizer  # noqa: E402
from asr.training import train  # noqa: E402


def batch_sequence(config: Config, durations: Sequence[float], steps: int) -> list[list[int]]:
    """The batches (dataset indices) the training loop takes for its first `steps` updates: the
    epochs' batch lists one after the other, as BucketBatchSampler builds them for the loop."""
    tc = config.train
    sampler = BucketBatchSampler(durations, tc.max_batch_seconds, tc.max_batch_size, shuffle=True, seed=tc.seed)
    batches: list[list[int]] = []
    epoch = 0
    while len(batches) < steps:
        batches += sampler.epoch_batches(epoch)
        epoch += 1
    return batches[:steps]


def padding_fraction(batches: Sequence[Sequence[int]], durations: Sequence[float]) -> float:
    """Padded share of the audio in these batches: 1 - sum(duration) / sum(longest x size)."""
    total = sum(durations[i] for b in batches for i in b)
    padded = sum(max(durations[i] for i in b) * len(b) for b in batches)
    return 0.0 if padded == 0 else 1.0 - total / padded


def ceiling_throughput(
    config: Config, utts: Sequence[Utterance], tokenizer: Tokenizer, warmup: Sequence[Sequence[int]],
    timed: Sequence[Sequence[int]], device: torch.device,
) -> dict:
    """Audio-hours per hour of a bare RNN + Linear + CTC + AdamW step on random tensors shaped like
    the given batches; also the peak memory (MB) of that phase."""
    mc, tc = config.model, config.train
    vocab = len(tokenizer)
    # The model itself answers how many encoder frames an utterance gives (features + subsampling).
    frames_model = CTCModel(config.features, mc, vocab)
    rate = config.features.sample_rate
    out_frames = [frames_model.output_frames(int(round(u.duration * rate))) for u in utts]
    label_lengths = [len(tokenizer.encode(u.text)) for u in utts]
    del frames_model

    rnn_class = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}[mc.rnn_type]
    torch.manual_seed(tc.seed)
    rnn = rnn_class(mc.hidden_size, mc.hidden_size, num_layers=mc.num_layers, batch_first=True,
                    bidirectional=mc.bidirectional, dropout=mc.dropout if mc.num_layers > 1 else 0.0).to(device)
    output = nn.Linear(mc.hidden_size * (2 if mc.bidirectional else 1), vocab).to(device)
    params = list(rnn.parameters()) + list(output.parameters())
    optimizer = torch.optim.AdamW(params, lr=tc.lr, weight_decay=tc.weight_decay, betas=(0.9, 0.98),
                                  fused=device.type == "cuda")
    use_bf16 = device.type == "cuda" and tc.precision == "bf16"

    # Random inputs and labels are views into two buffers made once, so the timed loop does no
    # host-to-device copies: (B, T, hidden) and (B, L) cut from the front of each buffer.
    shapes = []
    for batch in list(warmup) + list(timed):
        frames = torch.tensor([out_frames[i] for i in batch], dtype=torch.long)
        labels = torch.tensor([label_lengths[i] for i in batch], dtype=torch.long)
        shapes.append((len(batch), int(frames.max()), max(int(labels.max()), 1), frames.to(device), labels.to(device)))
    x_buffer = torch.randn(max(b * t for b, t, *_ in shapes) * mc.hidden_size, device=device)
    label_buffer = torch.randint(1, vocab, (max(b * n for b, _, n, *_ in shapes),), device=device)

    def step(batch_size: int, frames: int, max_label: int, frame_lengths: torch.Tensor, label_lens: torch.Tensor):
        # A fresh leaf that needs its gradient, as the real RNN's input (the subsampler's output) does.
        x = x_buffer[: batch_size * frames * mc.hidden_size].view(batch_size, frames, mc.hidden_size)
        x = x.detach().requires_grad_(True)
        labels = label_buffer[: batch_size * max_label].view(batch_size, max_label)
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=use_bf16):
            hidden, _ = rnn(x)
            logits = output(hidden)
        log_probs = logits.float().log_softmax(dim=-1)
        loss = F.ctc_loss(log_probs.transpose(0, 1), labels, frame_lengths, label_lens,
                          blank=tokenizer.blank, reduction="sum", zero_infinity=True) / batch_size
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    rnn.train()
    output.train()
    for shape in shapes[: len(warmup)]:
        step(*shape)
    _synchronize(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    for shape in shapes[len(warmup):]:
        step(*shape)
    _synchronize(device)
    seconds = time.perf_counter() - start
    audio_seconds = sum(utts[i].duration for b in timed for i in b)
    return {
        "audio_hours_per_hour": audio_seconds / max(seconds, 1e-9),
        "seconds": seconds,
        "audio_hours": audio_seconds / 3600,
        "peak_memory_mb": _peak_memory_mb(device),
    }


def loop_throughput(records: Sequence[dict], batches: Sequence[Sequence[int]], durations: Sequence[float]) -> dict:
    """Figures of the real loop from its metrics.jsonl "train" records, the first one (warm-up) left out.

    Each record holds its window's audio_hours_per_hour. A window's audio is known exactly from the
    batch list (update k trained on batches[k - 1]), so its wall time is audio / rate; summing both
    over the windows gives the throughput without the 0.1 s rounding of `elapsed`. When batches were
    skipped (non-finite loss) that mapping breaks, and `elapsed` differences are used instead."""
    train_records = sorted((r for r in records if r.get("type") == "train"), key=lambda r: r["step"])
    if len(train_records) < 2:
        raise ValueError(f"the real loop logged {len(train_records)} train records; need 2 or more "
                         "(the first is warm-up): raise --steps or lower train.log_every")
    warm, timed = train_records[0], train_records[1:]
    skipped = timed[-1].get("skipped_batches", 0) > 0
    audio, seconds, previous = [], [], warm
    for r in timed:
        if skipped:
            dt = max(r["elapsed"] - previous["elapsed"], 1e-9)
            a = r["audio_hours_per_hour"] * dt
        else:
            a = sum(durations[i] for b in batches[previous["step"]: r["step"]] for i in b)
            dt = a / max(r["audio_hours_per_hour"], 1e-12)
        audio.append(a)
        seconds.append(dt)
        previous = r
    total_seconds = sum(seconds)

    def time_weighted(key: str) -> float | None:
        if not all(key in r for r in timed):
            return None
        return sum(r[key] * s for r, s in zip(timed, seconds)) / max(total_seconds, 1e-12)

    peaks = [r["peak_memory_mb"] for r in train_records if r.get("peak_memory_mb") is not None]
    return {
        "audio_hours_per_hour": sum(audio) / max(total_seconds, 1e-12),
        "seconds": total_seconds,
        "audio_hours": sum(audio) / 3600,
        "warmup_steps": warm["step"],
        "timed_steps": timed[-1]["step"] - warm["step"],
        "padding_fraction": time_weighted("padding_fraction"),
        "data_wait_share": time_weighted("data_wait_share"),
        "peak_memory_mb": max(peaks) if peaks else None,
        "clipped_total": timed[-1].get("clipped_total"),
        "skipped_batches": timed[-1].get("skipped_batches", 0),
    }


def run_benchmark(config_path: Path | None, train_manifest: Path, overrides: Sequence[str], steps: int,
                  device_name: str | None, dev_manifest: Path | None = None) -> dict:
    """Both measurements; returns every figure as a flat dict (what --json writes)."""
    if steps < 2:
        raise ValueError("--steps must be at least 2 (the first log window is warm-up)")
    base = load_config(config_path, overrides)
    log_every = base.train.log_every
    if steps < 2 * log_every:
        log_every = max(1, steps // 4)  # at least two windows, the first is warm-up
    forced = [f"train.max_steps={steps}", f"train.log_every={log_every}", "train.save_every_steps=0"]
    if device_name:
        forced.append(f"train.device={device_name}")
    config = load_config(config_path, list(overrides) + forced)
    device = resolve_device(config.train.device)

    utts = read_manifest(train_manifest)
    usable = [u for u in utts if u.duration <= config.train.max_duration]  # what train() keeps
    if not usable:
        raise ValueError(f"{train_manifest}: no utterance is at most train.max_duration={config.train.max_duration} s")
    dev = read_manifest(dev_manifest) if dev_manifest else usable[:4]
    durations = [u.duration for u in usable]
    batches = batch_sequence(config, durations, steps)

    # The real loop first, so that its peak memory is its own.
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    with tempfile.TemporaryDirectory(prefix="bench_train_") as out_dir:
        start = time.perf_counter()
        state = train(config, usable, dev, out_dir)
        loop_wall = time.perf_counter() - start
        _close_file_logs()
        records = [json.loads(line) for line in (Path(out_dir) / "metrics.jsonl").read_text().splitlines() if line.strip()]
    loop = loop_throughput(records, batches, durations)
    if device.type == "cuda":
        torch.cuda.empty_cache()

    warm_batches = batches[: loop["warmup_steps"]]
    timed_batches = batches[loop["warmup_steps"]: loop["warmup_steps"] + loop["timed_steps"]]
    # The units train() used: BPE pieces are trained on the same transcripts, deterministically.
    tokenizer = build_tokenizer(config.tokenizer, [u.text for u in usable])
    ceiling = ceiling_throughput(config, usable, tokenizer, warm_batches, timed_batches, device)
    batches_per_epoch = len(BucketBatchSampler(durations, config.train.max_batch_seconds,
                                               config.train.max_batch_size, seed=config.train.seed).epoch_batches(0))
    return {
        "device": _device_name(device),
        "torch": torch.__version__,
        "config": str(config_path) if config_path else "defaults",
        "overrides": list(overrides),
        "train_manifest": str(train_manifest),
        "utterances": len(usable),
        "train_audio_hours": round(sum(durations) / 3600, 3),
        "batches_per_epoch": batches_per_epoch,
        "steps": state.step,
        "log_every": log_every,
        "warmup_batches": loop["warmup_steps"],
        "timed_batches": loop["timed_steps"],
        "precision": "bf16" if device.type == "cuda" and config.train.precision == "bf16" else "float32",
        "ceiling_audio_hours_per_hour": ceiling["audio_hours_per_hour"],
        "loop_audio_hours_per_hour": loop["audio_hours_per_hour"],
        "ratio": loop["audio_hours_per_hour"] / max(ceiling["audio_hours_per_hour"], 1e-12),
        "padding_fraction": padding_fraction(timed_batches, durations),
        "loop_padding_fraction": loop["padding_fraction"],
        "loop_data_wait_share": loop["data_wait_share"],
        "ceiling_peak_memory_mb": ceiling["peak_memory_mb"],
        "loop_peak_memory_mb": loop["peak_memory_mb"],
        "loop_clipped_total": loop["clipped_total"],
        "loop_skipped_batches": loop["skipped_batches"],
        "ceiling_timed_seconds": ceiling["seconds"],
        "loop_timed_seconds": loop["seconds"],
        "loop_total_seconds": loop_wall,
    }


def format_report(result: dict) -> str:
    def fmt(value, spec: str = ".3f") -> str:
        return "n/a" if value is None else format(value, spec)

    memory_note = "CUDA max allocated" if result["device"].startswith("cuda") else "process peak RSS"
    lines = [
        f"device: {result['device']}",
        f"torch: {result['torch']}",
        f"config: {result['config']} {' '.join(result['overrides'])}".rstrip(),
        f"train manifest: {result['train_manifest']} ({result['utterances']} utterances, {result['train_audio_hours']:.2f} h)",
        f"precision: {result['precision']}",
        f"batches per epoch: {result['batches_per_epoch']}",
        f"batches: {result['warmup_batches']} warm-up + {result['timed_batches']} timed (of {result['steps']} updates)",
        f"ceiling audio-hours per device-hour: {result['ceiling_audio_hours_per_hour']:.2f}",
        f"loop audio-hours per device-hour: {result['loop_audio_hours_per_hour']:.2f}",
        f"ratio loop / ceiling: {result['ratio']:.3f}",
        f"padding fraction (timed batches): {result['padding_fraction']:.4f}",
        f"loop padding fraction: {fmt(result['loop_padding_fraction'], '.4f')}",
        f"loop data-wait share: {fmt(result['loop_data_wait_share'], '.4f')}",
        f"ceiling peak memory MB: {fmt(result['ceiling_peak_memory_mb'], '.0f')}"
        + ("" if result["device"].startswith("cuda") else f" ({memory_note}, whole process)"),
        f"loop peak memory MB: {fmt(result['loop_peak_memory_mb'], '.0f')}",
        f"loop clipped updates: {fmt(result['loop_clipped_total'], 'd')}",
        "",
        "| device | torch | config | batches timed | ceiling audio-h/h | loop audio-h/h | ratio | padding | data wait | peak MB (ceiling / loop) |",
        "|---|---|---|---|---|---|---|---|---|---|",
        f"| {result['device']} | {result['torch']} | {result['config']} {' '.join(result['overrides'])} | "
        f"{result['timed_batches']} | {result['ceiling_audio_hours_per_hour']:.1f} | {result['loop_audio_hours_per_hour']:.1f} | "
        f"{result['ratio']:.3f} | {result['padding_fraction']:.3f} | {fmt(result['loop_data_wait_share'])} | "
        f"{fmt(result['ceiling_peak_memory_mb'], '.0f')} / {fmt(result['loop_peak_memory_mb'], '.0f')} |",
    ]
    return "\n".join(lines)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda: {torch.cuda.get_device_name(device)}"
    return f"cpu: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"


def _close_file_logs() -> None:
    """train() logs into its (temporary) out dir; let go of that file before the folder goes."""
    logger = logging.getLogger("asr")
    for handler in list(logger.handlers):
        if isinstance(handler, logging.FileHandler):
            logger.removeHandler(handler)
            handler.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", type=Path, default=None, help="YAML config (conf/*.yaml); defaults if omitted")
    p.add_argument("--train", required=True, type=Path, help="training manifest (real audio)")
    p.add_argument("--dev", type=Path, default=None,
                   help="dev manifest for the validation train() runs after the last update (outside the timing); "
                        "default: 4 training utterances")
    p.add_argument("--steps", type=int, default=100,
                   help="updates of the real loop (train.max_steps); the first log window is warm-up")
    p.add_argument("--device", default=None, help="auto, cpu, cuda or cuda:N (default: the config's train.device)")
    p.add_argument("--json", type=Path, default=None, help="also write the figures to this JSON file")
    p.add_argument("overrides", nargs="*", metavar="section.key=value")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    try:
        result = run_benchmark(args.config, args.train, args.overrides, args.steps, args.device, args.dev)
    except (FileNotFoundError, ValueError) as e:
        print(f"bench_train: error: {e}", file=sys.stderr)
        return 2
    print(format_report(result))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in result.items()}
        args.json.write_text(json.dumps(clean, indent=1) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""What a training run measures and records: the numbers of each log interval (loss, gradient norms
per layer, clipping, throughput, padding, memory), validation on the dev sets (loss and greedy
WER/CER), <out>/metrics.jsonl (one JSON object per log interval and per validation) and the plot
`asr plot` draws from it."""

from __future__ import annotations

import json
import logging
import math
import re
import sys
import time
from pathlib import Path
from typing import Mapping, Sequence

import torch

from ..config import Config
from ..data import Batch, BucketBatchSampler, SpeechDataset, collate
from ..decode import greedy_decode
from ..files import write_text_atomic
from ..model import CTCModel
from ..score import score
from ..text import Tokenizer
from .distributed import DistributedSetup, all_reduce_sum
from .state import TrainState
from .step import ctc_loss

log = logging.getLogger("asr.training")


class MetricsWindow:
    """Metrics between log lines: sums kept on the device, so the loop never waits on the GPU per
    step, and host-side timings and batch shapes."""

    def __init__(self, device: torch.device, state: TrainState):
        self.device = device
        self.reset(state)

    def reset(self, state: TrainState) -> None:
        zero = lambda: torch.zeros((), device=self.device)  # noqa: E731
        self.loss, self.grad_norm, self.applied, self.clipped, self.skipped = zero(), zero(), zero(), zero(), zero()
        self.steps = 0  # add() calls
        self.clipped_settled = 0  # clipped updates of this window already counted in the state
        self.grad_norms: torch.Tensor | None = None  # per layer group, at the last log step
        self.data_wait = 0.0  # seconds spent waiting for the DataLoader
        self.padded = self.total = 0  # samples: padding and all, over the window's batches
        self.start = time.perf_counter()
        self.audio_start = state.audio_seconds

    def add_padding(self, batch: Batch) -> None:
        """Count a (host-side) batch's padding."""
        total = batch.waves.shape[0] * batch.waves.shape[1]
        self.total += total
        self.padded += total - int(batch.wave_lengths.sum())

    def add(self, loss: torch.Tensor, grad_norm: torch.Tensor, grad_clip: float,
            nonfinite: torch.Tensor | None = None) -> None:
        """An applied update; with `nonfinite` (a 0-dim device flag) an update that may have been skipped."""
        if nonfinite is None:
            self.loss += loss.float()
            self.grad_norm += grad_norm.float()
            self.clipped += grad_norm > grad_clip
            self.applied += 1
        else:
            applied = nonfinite == 0
            self.loss += torch.where(applied, loss.float(), 0.0)
            self.grad_norm += torch.where(applied, grad_norm.float(), 0.0)
            self.clipped += applied & (grad_norm > grad_clip)
            self.applied += applied
            self.skipped += nonfinite
        self.steps += 1

    def settle(self, state: TrainState) -> None:
        """Move the clipped and skipped counts into the state (a host sync): before every checkpoint,
        so that the checkpoint holds them."""
        clipped, skipped = (int(v) for v in torch.stack([self.clipped, self.skipped]).tolist())
        self.clipped.zero_()
        self.skipped.zero_()
        self.clipped_settled += clipped
        state.clipped_total += clipped
        if skipped:
            state.skipped_batches += skipped
            log.warning("non-finite loss or gradient: %d updates skipped before update %d (%d so far)",
                        skipped, state.step, state.skipped_batches)

    def flush(self, state: TrainState, lr: float, elapsed: float, layer_groups: dict[str, list[torch.Tensor]],
              setup: DistributedSetup) -> dict:
        """The window's "train" record (a host sync; with several ranks, loss and padding over all)."""
        self.settle(state)
        seconds = time.perf_counter() - self.start
        summed = torch.stack([self.loss.double(), self.applied.double(),
                              torch.tensor(float(self.padded), dtype=torch.float64, device=self.device),
                              torch.tensor(float(self.total), dtype=torch.float64, device=self.device)])
        all_reduce_sum(summed, setup)
        loss_sum, applied, padded, total = summed.tolist()
        grad_norm_sum, applied_here = torch.stack([self.grad_norm.double(), self.applied.double()]).tolist()
        grad_norms = {} if self.grad_norms is None else dict(zip(layer_groups, self.grad_norms.tolist()))
        audio_hours = (state.audio_seconds - self.audio_start) / 3600
        record = {
            "type": "train", "step": state.step, "epoch": state.epoch, "lr": lr,
            "loss": loss_sum / applied if applied else math.nan,
            "grad_norm": grad_norm_sum / applied_here if applied_here else math.nan,
            "clipped": self.clipped_settled, "audio_hours_per_hour": audio_hours / max(seconds / 3600, 1e-9),
            "elapsed": round(elapsed, 1), "skipped_batches": state.skipped_batches,
            "clipped_total": state.clipped_total,
            "data_wait_share": self.data_wait / max(seconds, 1e-9),
            "padding_fraction": padded / total if total else 0.0,
            "peak_memory_mb": _peak_memory_mb(self.device),
            "grad_norms": grad_norms,
        }
        self.reset(state)
        return record


def _peak_memory_mb(device: torch.device) -> float | None:
    """Peak memory so far: allocated on the GPU, or the process's peak resident set on the CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    try:
        import resource
    except ImportError:  # not on Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10  # bytes on macOS, KiB on Linux


def layer_parameter_groups(model: CTCModel) -> dict[str, list[torch.Tensor]]:
    """The parameters by layer, for per-layer gradient norms: "subsampler", "rnn.0" (weight_ih_l0,
    weight_hh_l0, biases and their *_reverse), "rnn.1", ..., "output"."""
    groups: dict[str, list[torch.Tensor]] = {}
    for name, param in model.named_parameters():
        top, _, rest = name.partition(".")
        layer = re.search(r"_l(\d+)", rest) if top == "rnn" else None
        groups.setdefault(f"rnn.{layer.group(1)}" if layer else top, []).append(param)
    return groups


@torch.no_grad()
def layer_grad_norms(groups: dict[str, list[torch.Tensor]]) -> torch.Tensor:
    """(len(groups),) the L2 norm of each group's gradients, computed on the device."""
    norms = []
    for params in groups.values():
        grads = [p.grad for p in params if p.grad is not None]
        if grads:
            norms.append(torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)).float()))
        else:
            norms.append(torch.zeros((), device=params[0].device))
    return torch.stack(norms)


def validate(model: CTCModel, dev_set: SpeechDataset, tokenizer: Tokenizer, device: torch.device, config: Config,
             sets: Mapping[str, Sequence[str]] | None = None) -> dict:
    """Dev loss (mean per utterance) and greedy WER/CER, from one pass over length-sorted batches;
    with `sets` (name -> utterance ids) of more than one dev set, also each set's, under "sets"."""
    model.eval()
    total_loss = 0.0
    hyps: dict[str, str] = {}
    sampler = BucketBatchSampler(dev_set.durations, config.decode.batch_seconds, shuffle=False)
    with torch.inference_mode():
        for indices in sampler.epoch_batches(0):
            batch = collate([dev_set[i] for i in indices]).to(device)
            log_probs, out_lengths = model(batch.waves, batch.wave_lengths)
            loss = ctc_loss(log_probs, out_lengths, batch.labels, batch.label_lengths, tokenizer.blank, reduction="sum")
            total_loss += float(loss)
            for i, ids in zip(indices, greedy_decode(log_probs, out_lengths, tokenizer.blank)):
                hyps[dev_set.utts[i].id] = tokenizer.decode(ids)
    refs = {u.id: u.text for u in dev_set.utts}
    report = score(refs, hyps)
    model.train()
    result = {"loss": total_loss / max(len(dev_set), 1), "wer": round(report.wer, 3), "cer": round(report.cer, 3)}
    if sets and len(sets) > 1:
        reports = {name: score({i: refs[i] for i in ids}, {i: hyps[i] for i in ids}) for name, ids in sets.items()}
        result["sets"] = {name: {"wer": round(r.wer, 3), "cer": round(r.cer, 3)} for name, r in reports.items()}
    return result


def drop_metrics_after(path: Path, state: TrainState) -> None:
    """Forget the metrics a killed run logged after its last checkpoint: the resumed run logs
    those steps again."""
    if not path.is_file():
        return
    records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    kept = [r for r in records if (r["step"], r["epoch"]) <= (state.step, state.epoch)]
    if len(kept) < len(records):
        write_text_atomic(path, "".join(json.dumps(r) + "\n" for r in kept))


def plot_training(exp_dir: str | Path, out: str | Path | None = None) -> Path:
    """Loss, gradient norm (total and per layer) and dev WER/CER over updates from
    <exp_dir>/metrics.jsonl -> PNG."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise RuntimeError("plotting needs matplotlib: pip install 'asr[plot]'") from None
    exp_dir = Path(exp_dir)
    records = [json.loads(line) for line in open(exp_dir / "metrics.jsonl", encoding="utf-8") if line.strip()]
    train_rows = [r for r in records if r["type"] == "train"]
    valid_rows = [r for r in records if r["type"] == "valid"]
    fig, axes = plt.subplots(1, 4, figsize=(20, 4))
    axes[0].plot([r["step"] for r in train_rows], [r["loss"] for r in train_rows], label="train")
    axes[0].plot([r["step"] for r in valid_rows], [r["loss"] for r in valid_rows], "o-", label="dev")
    axes[0].set(title="CTC loss per utterance", xlabel="update")
    axes[0].legend()
    axes[1].plot([r["step"] for r in train_rows], [r["grad_norm"] for r in train_rows])
    axes[1].set(title="gradient norm (before clipping)", xlabel="update", yscale="log")
    layers = list(dict.fromkeys(name for r in train_rows for name in r.get("grad_norms") or {}))
    for name in layers:  # vanishing (falling towards the input) or exploding gradients show here
        rows = [r for r in train_rows if name in (r.get("grad_norms") or {})]
        axes[2].plot([r["step"] for r in rows], [r["grad_norms"][name] for r in rows], label=name)
    axes[2].set(title="gradient norm per layer (before clipping)", xlabel="update", yscale="log")
    if layers:
        axes[2].legend(fontsize="small")
    axes[3].plot([r["step"] for r in valid_rows], [r["wer"] for r in valid_rows], "o-", label="WER")
    axes[3].plot([r["step"] for r in valid_rows], [r["cer"] for r in valid_rows], "o-", label="CER")
    axes[3].set(title="dev error rate (greedy, %)", xlabel="update")
    axes[3].legend()
    fig.tight_layout()
    out = Path(out) if out else exp_dir / "training.png"
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


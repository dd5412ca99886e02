"""Bit-identical training check for refactors of asr/training/: short deterministic `asr train` runs
on the generated corpus of tests/synth.py (CPU, one thread, dropout and SpecAugment on), whose
last.pt tensors (model, EMA weights, optimizer state) are saved as a reference before a change and
compared with torch.equal after it.

    OMP_NUM_THREADS=1 python scripts/check_bit_identical.py --save /tmp/ref      # before the change
    OMP_NUM_THREADS=1 python scripts/check_bit_identical.py --compare /tmp/ref   # after it

Runs: "plain" (30 updates), "ema" (the same with train.ema_decay=0.9) and "resumed" (ema, stopped
after 15 updates, then `--resume` to 30). Exit status 1 when any tensor differs. The reference is
machine-specific (float rounding differs between CPUs): compare on the machine that saved it.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.synth import write_synth_corpus  # noqa: E402

OVERRIDES = [
    "model.subsampling=stack", "model.subsampling_factor=2", "model.hidden_size=32", "model.num_layers=2",
    "model.dropout=0.2", "features.n_mels=24", "specaug.freq_masks=1", "specaug.freq_width=4",
    "specaug.time_masks=1", "train.epochs=12", "train.max_batch_seconds=4", "train.lr=3e-3",
    "train.warmup_steps=3", "train.num_workers=0", "train.log_every=2", "train.device=cpu", "train.seed=7",
]
RUNS = {  # name -> the argument lists of its successive `asr train` calls
    "plain": [["train.max_steps=30"]],
    "ema": [["train.max_steps=30", "train.ema_decay=0.9"]],
    "resumed": [["train.max_steps=15", "train.ema_decay=0.9"], ["--resume", "train.max_steps=30", "train.ema_decay=0.9"]],
}


def run_training(manifest: Path, out: Path, argv: list[str]) -> None:
    options = [a for a in argv if a.startswith("--")]
    overrides = [a for a in argv if not a.startswith("--")]
    command = [sys.executable, "-m", "asr.cli", "train", "--train", str(manifest), "--dev", str(manifest),
               "--out", str(out), *options, *OVERRIDES, *overrides]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"{' '.join(command)} failed (exit {done.returncode}):\n{done.stderr[-3000:]}")


def tensors(payload: dict) -> dict[str, torch.Tensor]:
    """Every tensor of last.pt's model, ema and optimizer entries, by a flat name."""
    found: dict[str, torch.Tensor] = {}

    def walk(prefix: str, value) -> None:
        if isinstance(value, torch.Tensor):
            found[prefix] = value
        elif isinstance(value, dict):
            for key, item in value.items():
                walk(f"{prefix}.{key}", item)
        elif isinstance(value, (list, tuple)):
            for i, item in enumerate(value):
                walk(f"{prefix}.{i}", item)

    for entry in ("model", "ema", "optimizer"):
        if entry in payload:
            walk(entry, payload[entry])
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--save", type=Path, help="folder to write the reference last.pt files to")
    mode.add_argument("--compare", type=Path, help="folder holding the reference last.pt files")
    args = parser.parse_args()
    torch.set_num_threads(1)
    failed = False
    with tempfile.TemporaryDirectory() as tmp:
        manifest = write_synth_corpus(Path(tmp) / "synth")
        for name, calls in RUNS.items():
            out = Path(tmp) / name
            for argv in calls:
                run_training(manifest, out, argv)
            payload = torch.load(out / "last.pt", map_location="cpu", weights_only=True)
            if args.save:
                args.save.mkdir(parents=True, exist_ok=True)
                torch.save(payload, args.save / f"{name}.pt")
                print(f"{name}: step {payload['state']['step']}, {len(tensors(payload))} tensors saved")
                continue
            reference = torch.load(args.compare / f"{name}.pt", map_location="cpu", weights_only=True)
            ours, theirs = tensors(payload), tensors(reference)
            differing = sorted(k for k in theirs if k not in ours or not torch.equal(ours[k], theirs[k]))
            differing += sorted(k for k in ours if k not in theirs)
            same_state = payload["state"]["step"] == reference["state"]["step"]
            ok = not differing and same_state
            failed |= not ok
            print(f"{name}: step {payload['state']['step']}, {len(theirs)} tensors: "
                  + ("all bit-identical" if ok else f"DIFFER: {', '.join(differing[:10]) or 'state.step'}"))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

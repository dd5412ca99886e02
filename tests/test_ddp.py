"""Distributed training (DistributedDataParallel, CPU processes on the gloo backend), from real
`torchrun -m asr.training` runs: ranks train on disjoint batches that together make the epoch, end
with identical weights, resume exactly; one process under torchrun is bit for bit a plain run.

Each rank reports what it did through ASR_TRAIN_TRACE_DIR (see asr/training/loop.py): the batches it
trained on and its final weights."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from asr.checkpoint import load_data_file, read_checkpoint
from asr.config import load_config
from asr.data import BucketBatchSampler, read_manifest
from asr.training import TRACE_ENV, distributed_setup_from_env, train
from synth import write_synth_corpus
from test_train import OVERRIDES as TRAIN_OVERRIDES

torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]
# 8 utterances in batches of 2: 4 batches per epoch, 2 per rank with 2 processes.
OVERRIDES = TRAIN_OVERRIDES + ["train.epochs=2", "train.max_batch_seconds=100", "train.max_batch_size=2",
                               "train.log_every=1", "train.dev_max_utts=2"]


@pytest.fixture(scope="module")
def manifest(tmp_path_factory) -> Path:
    return write_synth_corpus(tmp_path_factory.mktemp("synth"))


def _torchrun(processes: int, manifest: Path, out: Path, trace: Path, *extra: str) -> None:
    """`torchrun --standalone --nproc-per-node N -m asr.training ...` on the CPU; fails the test with
    the run's output when it fails."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", TRACE_ENV: str(trace)}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(processes),
               "-m", "asr.training", "--train", str(manifest), "--dev", str(manifest), "--out", str(out),
               *OVERRIDES, *extra]
    run = subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, (run.stdout + run.stderr)[-4000:]


def _trace(folder: Path, rank: int) -> list[dict]:
    return [json.loads(line) for line in open(folder / f"rank{rank}.batches.jsonl")]


def _assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


@pytest.fixture(scope="module")
def two_ranks(manifest, tmp_path_factory) -> Path:
    """A finished 2-process run: its folder holds exp/ and trace/."""
    folder = tmp_path_factory.mktemp("two_ranks")
    _torchrun(2, manifest, folder / "exp", folder / "trace")
    return folder


def test_two_ranks_split_the_epoch_and_end_with_identical_weights(two_ranks, manifest):
    ranks = [_trace(two_ranks / "trace", rank) for rank in (0, 1)]
    durations = [u.duration for u in read_manifest(manifest)]
    sampler = BucketBatchSampler(durations, 100, 2, shuffle=True, seed=0)
    for epoch in (0, 1):
        mine = [[tuple(r["indices"]) for r in trace if r["epoch"] == epoch] for trace in ranks]
        assert len(mine[0]) == len(mine[1]) == 2  # the same number of steps, or the ranks would hang
        seen = [i for batches in mine for batch in batches for i in batch]
        assert sorted(seen) == list(range(8))  # disjoint, and together the whole epoch
        assert sorted(mine[0] + mine[1]) == sorted(map(tuple, sampler.epoch_batches(epoch)))
        assert [r["batch"] for r in ranks[0] if r["epoch"] == epoch] == [0, 1]

    weights = [load_data_file(two_ranks / "trace" / f"rank{rank}.weights.pt") for rank in (0, 1)]
    _assert_same_weights(weights[0], weights[1])
    _assert_same_weights(weights[0], read_checkpoint(two_ranks / "exp" / "last.pt")["model"])

    # Rank 0 alone wrote the logs: one record per update, and the updates saw both ranks' audio.
    records = [json.loads(line) for line in open(two_ranks / "exp" / "metrics.jsonl")]
    assert [r["step"] for r in records if r["type"] == "train"] == [1, 2, 3, 4]
    assert [r["epoch"] for r in records if r["type"] == "valid"] == [1, 2]
    state = read_checkpoint(two_ranks / "exp" / "last.pt")["state"]
    assert state["step"] == 4 and state["world_size"] == 2
    assert state["audio_seconds"] == pytest.approx(2 * sum(durations))
    assert "distributed: 2 processes (gloo backend)" in (two_ranks / "exp" / "train.log").read_text()


def test_two_ranks_resume_mid_epoch_exactly(two_ranks, manifest, tmp_path):
    _torchrun(2, manifest, tmp_path / "exp", tmp_path / "trace", "train.max_steps=3")
    assert read_checkpoint(tmp_path / "exp" / "last.pt")["state"]["batch_in_epoch"] == 1
    _torchrun(2, manifest, tmp_path / "exp", tmp_path / "trace", "--resume")
    for rank in (0, 1):  # the same batches, and (with each rank's own RNG states back) the same weights
        assert _trace(tmp_path / "trace", rank) == _trace(two_ranks / "trace", rank)
    _assert_same_weights(read_checkpoint(tmp_path / "exp" / "last.pt")["model"],
                         read_checkpoint(two_ranks / "exp" / "last.pt")["model"])


def test_torchrun_with_one_process_equals_a_plain_run(manifest, tmp_path):
    _torchrun(1, manifest, tmp_path / "torchrun", tmp_path / "trace")
    utts = read_manifest(manifest)
    train(load_config(None, OVERRIDES), utts, utts, tmp_path / "plain")
    _assert_same_weights(read_checkpoint(tmp_path / "torchrun" / "last.pt")["model"],
                         read_checkpoint(tmp_path / "plain" / "last.pt")["model"])
    losses = [[(r["type"], r["step"], r["loss"]) for r in map(json.loads, open(tmp_path / name / "metrics.jsonl"))]
              for name in ("torchrun", "plain")]
    assert losses[0] == losses[1]


def test_distributed_setup_from_env():
    assert not distributed_setup_from_env({}).active
    setup = distributed_setup_from_env({"WORLD_SIZE": "4", "RANK": "3", "LOCAL_RANK": "1", "MASTER_ADDR": "127.0.0.1",
                                        "MASTER_PORT": "29500"})
    assert (setup.rank, setup.world_size, setup.local_rank, setup.active, setup.is_main) == (3, 4, 1, True, False)
    with pytest.raises(ValueError, match="must be integers"):
        distributed_setup_from_env({"WORLD_SIZE": "two", "MASTER_ADDR": "x", "MASTER_PORT": "1"})
    with pytest.raises(ValueError, match="do not fit WORLD_SIZE=2"):
        distributed_setup_from_env({"WORLD_SIZE": "2", "RANK": "2", "MASTER_ADDR": "x", "MASTER_PORT": "1"})
    with pytest.raises(ValueError, match="torchrun"):
        distributed_setup_from_env({"WORLD_SIZE": "2", "RANK": "0"})

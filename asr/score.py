"""Word and character error rates with jiwer, reported the way sclite does.

Both sides are normalized with asr.text.normalize first, so casing and punctuation never count.
References and hypotheses are matched by utterance id; a reference with no hypothesis scores as
all deletions (an empty hypothesis), never silently dropped.

Two systems on the same references are compared by the paired bootstrap (Bisani and Ney, ICASSP
2004; Kaldi's compute-wer-bootci): utterances are resampled with replacement, both systems' errors
summed over each resample, and the spread of the difference says whether a gain of a few tenths of
a point is more than the choice of test utterances.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import jiwer
import numpy as np

from .text import normalize


@dataclass
class ErrorCounts:
    utterances: int = 0
    units: int = 0  # reference words (or characters)
    correct: int = 0
    substitutions: int = 0
    deletions: int = 0
    insertions: int = 0
    utterance_errors: int = 0  # utterances with at least one error

    @property
    def errors(self) -> int:
        return self.substitutions + self.deletions + self.insertions

    @property
    def rate(self) -> float:
        """Error rate in percent; with no reference units, 0 if nothing was inserted, else 100."""
        if self.units == 0:
            return 0.0 if self.insertions == 0 else 100.0
        return 100.0 * self.errors / self.units

    def pct(self, n: int, of: int | None = None) -> float:
        total = self.units if of is None else of
        return 100.0 * n / total if total else 0.0


@dataclass
class Alignment:
    id: str
    ref: list[str]
    hyp: list[str]
    ops: list[str]  # one of C S D I per aligned position
    char_errors: int = 0
    char_units: int = 0  # reference characters, spaces included


@dataclass
class ScoreReport:
    words: ErrorCounts = field(default_factory=ErrorCounts)
    chars: ErrorCounts = field(default_factory=ErrorCounts)
    alignments: list[Alignment] = field(default_factory=list)
    missing_hypotheses: list[str] = field(default_factory=list)
    extra_hypotheses: list[str] = field(default_factory=list)

    @property
    def wer(self) -> float:
        return self.words.rate

    @property
    def cer(self) -> float:
        return self.chars.rate


def score(refs: dict[str, str], hyps: dict[str, str]) -> ScoreReport:
    """refs/hyps: utterance id -> text. Scores every reference id, in sorted order."""
    report = ScoreReport()
    report.missing_hypotheses = sorted(set(refs) - set(hyps))
    report.extra_hypotheses = sorted(set(hyps) - set(refs))
    for utt_id in sorted(refs):
        ref, hyp = normalize(refs[utt_id]), normalize(hyps.get(utt_id, ""))
        ops, ref_words, hyp_words = _align(ref.split(), hyp.split())
        _add(report.words, ops)
        # Spaces are characters too (a missed word boundary is an error); jiwer would drop a bare space.
        char_ops, _, _ = _align(list(ref.replace(" ", "|")), list(hyp.replace(" ", "|")))
        _add(report.chars, char_ops)
        report.alignments.append(Alignment(utt_id, ref_words, hyp_words, ops, sum(op != "C" for op in char_ops),
                                           sum(op != "I" for op in char_ops)))
    return report


@dataclass
class Comparison:
    """System B against system A on the same references: rates in percent, `difference` = B - A in
    points (negative: B makes fewer errors), [low, high] its central 95% bootstrap interval, and
    `b_better` the share of resamples in which B makes fewer errors than A (Bisani and Ney's
    "probability of improvement")."""

    unit: str  # "WER" or "CER"
    a: float
    b: float
    difference: float
    low: float
    high: float
    b_better: float
    utterances: int
    resamples: int


def compare(a: ScoreReport, b: ScoreReport, resamples: int = 1000, seed: int = 0) -> list[Comparison]:
    """The paired bootstrap of two reports of the same references (asr.score.score of two systems'
    hypotheses), for words and characters. Each resample draws as many utterances as there are, with
    replacement, the same draw for both systems; a resample with no reference units is left out."""
    ids_a, ids_b = [x.id for x in a.alignments], [x.id for x in b.alignments]
    if ids_a != ids_b:
        raise ValueError(f"the two reports score different utterances ({len(ids_a)} and {len(ids_b)} ids, "
                         f"{len(set(ids_a) ^ set(ids_b))} in one only): compare hypotheses of the same references")
    if not ids_a:
        raise ValueError("no utterances to compare")
    if resamples < 1:
        raise ValueError(f"resamples must be at least 1, got {resamples}")
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(ids_a), size=(resamples, len(ids_a)))
    out = []
    for unit in ("WER", "CER"):
        errors_a, units = _utterance_counts(a, unit)
        errors_b, _ = _utterance_counts(b, unit)
        sums_a, sums_b, sums_units = errors_a[draws].sum(1), errors_b[draws].sum(1), units[draws].sum(1)
        kept = sums_units > 0
        if not kept.any():
            raise ValueError("the references hold no words: nothing to compare")
        differences = 100.0 * (sums_b[kept] - sums_a[kept]) / sums_units[kept]
        rate_a, rate_b = (100.0 * e.sum() / units.sum() for e in (errors_a, errors_b))
        low, high = np.percentile(differences, [2.5, 97.5])
        out.append(Comparison(unit, rate_a, rate_b, rate_b - rate_a, float(low), float(high),
                              float(np.mean(sums_b[kept] < sums_a[kept])), len(ids_a), int(kept.sum())))
    return out


def _utterance_counts(report: ScoreReport, unit: str) -> tuple[np.ndarray, np.ndarray]:
    """(U,) errors and (U,) reference units of each utterance, in words ("WER") or characters ("CER")."""
    if unit == "WER":
        rows = [(sum(op != "C" for op in x.ops), len(x.ops) - x.ops.count("I")) for x in report.alignments]
    else:
        rows = [(x.char_errors, x.char_units) for x in report.alignments]
    errors, units = np.array(rows, dtype=np.int64).reshape(-1, 2).T
    return errors, units


def format_comparison(comparisons: list[Comparison], name_a: str = "A", name_b: str = "B") -> str:
    """One line per unit: both rates, the difference B - A with its 95% interval, and how often B wins."""
    lines = [f"A: {name_a}", f"B: {name_b}"]
    for c in comparisons:
        lines.append(f"{c.unit} A {c.a:.2f}  B {c.b:.2f}  B - A {c.difference:+.2f} points, 95% interval "
                     f"[{c.low:+.2f}, {c.high:+.2f}]; B better in {100 * c.b_better:.1f}% of {c.resamples} "
                     f"paired bootstrap resamples of the {c.utterances} utterances")
    return "\n".join(lines)


def _align(ref: list[str], hyp: list[str]) -> tuple[list[str], list[str], list[str]]:
    """Edit operations between two token lists, through jiwer. Returns (ops, ref', hyp') with
    '***' filling the side that has no token at an insertion or deletion, as sclite prints."""
    if not ref:
        return ["I"] * len(hyp), ["***"] * len(hyp), list(hyp)
    if not hyp:
        return ["D"] * len(ref), list(ref), ["***"] * len(ref)
    # jiwer splits on spaces, so characters are joined with a separator it will split on again.
    out = jiwer.process_words(" ".join(ref), " ".join(hyp))
    ops, ref_out, hyp_out = [], [], []
    for chunk in out.alignments[0]:
        if chunk.type == "equal" or chunk.type == "substitute":
            for r, h in zip(range(chunk.ref_start_idx, chunk.ref_end_idx), range(chunk.hyp_start_idx, chunk.hyp_end_idx)):
                ops.append("C" if chunk.type == "equal" else "S")
                ref_out.append(ref[r])
                hyp_out.append(hyp[h])
        elif chunk.type == "delete":
            for r in range(chunk.ref_start_idx, chunk.ref_end_idx):
                ops.append("D")
                ref_out.append(ref[r])
                hyp_out.append("***")
        elif chunk.type == "insert":
            for h in range(chunk.hyp_start_idx, chunk.hyp_end_idx):
                ops.append("I")
                ref_out.append("***")
                hyp_out.append(hyp[h])
    return ops, ref_out, hyp_out


def _add(counts: ErrorCounts, ops: list[str]) -> None:
    counts.utterances += 1
    counts.correct += ops.count("C")
    counts.substitutions += ops.count("S")
    counts.deletions += ops.count("D")
    counts.insertions += ops.count("I")
    counts.units += ops.count("C") + ops.count("S") + ops.count("D")
    if any(op != "C" for op in ops):
        counts.utterance_errors += 1


def format_summary(report: ScoreReport, title: str = "") -> str:
    """An sclite-style summary table for words and characters."""
    lines = []
    if title:
        lines.append(title)
    header = f"{'':6} | {'#Snt':>6} {'#Wrd':>8} | {'Corr':>6} {'Sub':>6} {'Del':>6} {'Ins':>6} {'Err':>6} {'S.Err':>6}"
    lines += [header, "-" * len(header)]
    for name, c in (("WER", report.words), ("CER", report.chars)):
        lines.append(
            f"{name:6} | {c.utterances:6d} {c.units:8d} | {c.pct(c.correct):6.1f} {c.pct(c.substitutions):6.1f} "
            f"{c.pct(c.deletions):6.1f} {c.pct(c.insertions):6.1f} {c.rate:6.1f} {c.pct(c.utterance_errors, c.utterances):6.1f}"
        )
    w = report.words
    lines.append(
        f"%WER {w.rate:.2f} [ {w.errors} / {w.units}, {w.insertions} ins, {w.deletions} del, {w.substitutions} sub ]"
    )
    lines.append(f"%CER {report.cer:.2f} [ {report.chars.errors} / {report.chars.units} ]")
    if report.missing_hypotheses:
        lines.append(f"warning: {len(report.missing_hypotheses)} references have no hypothesis (scored as empty)")
    if report.extra_hypotheses:
        lines.append(f"warning: {len(report.extra_hypotheses)} hypotheses have no reference (ignored)")
    return "\n".join(lines)


@dataclass
class ErrorTally:
    """The word errors of a report by word, as sclite's detailed report lists them."""

    substitutions: Counter = field(default_factory=Counter)  # (ref word, hyp word) -> times
    deletions: Counter = field(default_factory=Counter)  # ref word -> times
    insertions: Counter = field(default_factory=Counter)  # hyp word -> times
    reference: Counter = field(default_factory=Counter)  # ref word -> times in the references
    wrong: Counter = field(default_factory=Counter)  # ref word -> times substituted or deleted


def tally_errors(report: ScoreReport) -> ErrorTally:
    """Count the word alignments' errors by word: which confusions, deletions and insertions recur."""
    tally = ErrorTally()
    for a in report.alignments:
        for ref, hyp, op in zip(a.ref, a.hyp, a.ops):
            if op != "I":
                tally.reference[ref] += 1
            if op == "S":
                tally.substitutions[ref, hyp] += 1
                tally.wrong[ref] += 1
            elif op == "D":
                tally.deletions[ref] += 1
                tally.wrong[ref] += 1
            elif op == "I":
                tally.insertions[hyp] += 1
    return tally


def format_errors(tally: ErrorTally, top: int = 10) -> str:
    """The `top` most frequent substitutions, deletions, insertions and most often wrong reference
    words, one per line with its count (ties in alphabetical order)."""

    def most(counter: Counter) -> list:
        return sorted(counter.items(), key=lambda kv: (-kv[1], kv[0]))[:top]

    lines = [f"SUBSTITUTIONS ({sum(tally.substitutions.values())} in all; ref ==> hyp)"]
    lines += [f"{n:6d}  {ref} ==> {hyp}" for (ref, hyp), n in most(tally.substitutions)]
    lines.append(f"DELETIONS ({sum(tally.deletions.values())} in all)")
    lines += [f"{n:6d}  {word}" for word, n in most(tally.deletions)]
    lines.append(f"INSERTIONS ({sum(tally.insertions.values())} in all)")
    lines += [f"{n:6d}  {word}" for word, n in most(tally.insertions)]
    lines.append("REFERENCE WORDS MOST OFTEN WRONG (substituted or deleted / times in the references)")
    lines += [f"{n:6d} / {tally.reference[word]:<6d} {word}" for word, n in most(tally.wrong)]
    return "\n".join(lines)


def format_alignments(report: ScoreReport) -> str:
    """Per-utterance alignments, sclite 'pralign' style, worst utterances are easy to grep by 'Eval:'."""
    blocks = []
    for a in report.alignments:
        widths = [max(len(r), len(h)) for r, h in zip(a.ref, a.hyp)]
        ref = " ".join(r.ljust(w) if op == "C" else r.upper().ljust(w) for r, w, op in zip(a.ref, widths, a.ops))
        hyp = " ".join(h.ljust(w) if op == "C" else h.upper().ljust(w) for h, w, op in zip(a.hyp, widths, a.ops))
        ops = " ".join(("" if op == "C" else op).ljust(w) for w, op in zip(widths, a.ops))
        counts = {k: a.ops.count(k) for k in "CSDI"}
        blocks.append(
            f"id: {a.id}\nScores: (#C #S #D #I) {counts['C']} {counts['S']} {counts['D']} {counts['I']}\n"
            f"REF:  {ref.rstrip()}\nHYP:  {hyp.rstrip()}\nEval: {ops.rstrip()}\n"
        )
    return "\n".join(blocks)


def read_texts(path: str | os.PathLike) -> dict[str, str]:
    """Utterance id -> text from a manifest (JSON Lines with id and text) or an `id<TAB>text` file
    (also `id text`, Kaldi style)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: file not found")
    texts: dict[str, str] = {}
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            line = line.rstrip("\n")
            if not line.strip():
                continue
            if line.lstrip().startswith("{"):
                try:
                    data = json.loads(line)
                    utt_id, text = str(data["id"]), data.get("text", "")  # no text: an empty hypothesis
                except (json.JSONDecodeError, KeyError) as e:
                    raise ValueError(f"{path}:{number}: not a manifest line ({e})") from None
                if not isinstance(text, str):  # str(None) would be scored as the word "none"
                    raise ValueError(f'{path}:{number}: "text" is {json.dumps(text)}, not a string')
            else:
                sep = "\t" if "\t" in line else " "
                utt_id, _, text = line.partition(sep)
            if utt_id in texts:
                raise ValueError(f"{path}:{number}: utterance id {utt_id!r} appears twice")
            texts[utt_id] = text
    return texts

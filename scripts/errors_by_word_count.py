#!/usr/bin/env python3
"""Where a model's word errors are, by how often a text (the LM's training text) has seen each
reference word.

    python scripts/errors_by_word_count.py data/libri_dev.jsonl exp/hyps/p6_sb.libri_dev.txt \\
        --text ../shared/data/lm/gutenberg-100M.txt.gz data/libri_train.jsonl data/so762_train90.jsonl

Prints a Markdown table: for each bin of counts (never seen, 1-9, 10-99, 100 or more; --edges
changes them) the reference words in it, the share of them wrong (substituted or deleted), and their
share of all word errors; insertions last. Errors on words the text has barely seen are for the LM,
its text and the lexicon to fix; errors on common words are the acoustic model's (issue 23: which
lever could reach a WER bar). Texts are read and normalized as `asr lm build` reads them.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path
from typing import Iterable

from asr.lm import iter_text
from asr.score import ErrorTally, read_texts, score, tally_errors


def word_counts(lines: Iterable[str]) -> Counter:
    """Word -> times in normalized lines."""
    counts: Counter = Counter()
    for line in lines:
        counts.update(line.split())
    return counts


def bin_errors(tally: ErrorTally, counts: Counter, edges: list[int]) -> list[tuple[str, int, int]]:
    """(bin label, reference words in the bin, of them wrong) for the bins [0, e1), [e1, e2), ...,
    [e_last, inf) of each reference word's count in the text; then ("insertions", 0, count)."""
    bounds = [0, *edges]
    labels = []
    for low, high in zip(bounds, [*edges, None]):
        if high is None:
            labels.append(f"{low} or more")
        elif high - low == 1:
            labels.append("never" if low == 0 else str(low))
        else:
            labels.append(f"{low}-{high - 1}")
    words = [0] * len(bounds)
    wrong = [0] * len(bounds)
    for word, times in tally.reference.items():
        k = sum(counts[word] >= b for b in bounds) - 1
        words[k] += times
        wrong[k] += tally.wrong[word]
    rows = list(zip(labels, words, wrong))
    rows.append(("insertions", 0, sum(tally.insertions.values())))
    return rows


def format_table(rows: list[tuple[str, int, int]]) -> str:
    total = sum(wrong for _, _, wrong in rows)
    lines = ["| reference words seen in the text | words in the references | of them wrong | share of all errors |",
             "|---|---|---|---|"]
    for label, words, wrong in rows:
        of_them = f"{100 * wrong / words:.1f}%" if words else "—"
        lines.append(f"| {label} | {words if words else '—'} | {of_them} | {100 * wrong / max(total, 1):.1f}% |")
    lines.append(f"({total} word errors in all)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("ref", type=Path, help="manifest or 'id<TAB>text' file")
    p.add_argument("hyp", type=Path, help="manifest or 'id<TAB>text' file")
    p.add_argument("--text", type=Path, nargs="+", required=True,
                   help="the LM's training text: text files (.gz read as gzip) or manifests, as `asr lm build` takes")
    p.add_argument("--edges", type=int, nargs="+", default=[1, 10, 100],
                   help="bin edges in counts (default 1 10 100: never, 1-9, 10-99, 100 or more)")
    args = p.parse_args(argv)
    if args.edges != sorted(set(args.edges)) or args.edges[0] < 1:
        p.error("--edges must be increasing counts of at least 1")
    for path in args.text:
        if not path.is_file():
            print(f"error: {path}: text file not found", file=sys.stderr)
            return 1
    tally = tally_errors(score(read_texts(args.ref), read_texts(args.hyp)))
    counts = word_counts(line for path in args.text for line in iter_text(path))
    print(format_table(bin_errors(tally, counts, args.edges)))
    return 0


if __name__ == "__main__":
    sys.exit(main())

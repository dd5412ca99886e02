"""asr.score: sclite-style WER/CER counts checked by hand, against jiwer, and the text formats; the paired
bootstrap comparison of two systems."""

from __future__ import annotations

import json
import random
import re

import jiwer
import pytest

from asr.score import (ErrorCounts, compare, format_alignments, format_comparison, format_errors, format_summary,
                       read_texts, score, tally_errors)

REFS = {"u1": "the cat sat on the mat", "u2": "hello world", "u3": "a b c"}
HYPS = {"u1": "the cat sit on mat", "u2": "hello world", "u3": "a x b c d"}


# --------------------------------------------------------------------------- word counts by hand
#
# u1: the=the cat=cat sat->sit (S) on=on the->*** (D) mat=mat   C4 S1 D1 I0, 6 ref words
# u2: hello world, all correct                                  C2 S0 D0 I0, 2 ref words
# u3: a=a ***->x (I) b=b c=c ***->d (I)                         C3 S0 D0 I2, 3 ref words
# total: 11 words, C9 S1 D1 I2 = 4 errors, WER 4/11 = 36.36 %, 2 of 3 sentences wrong (66.7 %)


def test_word_counts_by_hand():
    report = score(REFS, HYPS)
    w = report.words
    assert (w.utterances, w.units, w.correct, w.substitutions, w.deletions, w.insertions) == (3, 11, 9, 1, 1, 2)
    assert w.utterance_errors == 2
    assert w.errors == 4
    assert w.rate == pytest.approx(100 * 4 / 11)
    assert report.wer == pytest.approx(36.363636, abs=1e-4)
    assert report.missing_hypotheses == [] and report.extra_hypotheses == []


def test_per_utterance_alignments_by_hand():
    report = score(REFS, HYPS)
    by_id = {a.id: a for a in report.alignments}
    assert [a.id for a in report.alignments] == ["u1", "u2", "u3"]  # sorted reference ids

    u1 = by_id["u1"]
    assert u1.ops == ["C", "C", "S", "C", "D", "C"]
    assert u1.ref == ["the", "cat", "sat", "on", "the", "mat"]
    assert u1.hyp == ["the", "cat", "sit", "on", "***", "mat"]

    assert by_id["u2"].ops == ["C", "C"]

    u3 = by_id["u3"]
    assert u3.ops == ["C", "I", "C", "C", "I"]
    assert u3.ref == ["a", "***", "b", "c", "***"]
    assert u3.hyp == ["a", "x", "b", "c", "d"]


def test_format_summary_numbers():
    text = format_summary(score(REFS, HYPS), title="my title")
    lines = text.splitlines()
    assert lines[0] == "my title"
    assert "%WER 36.36 [ 4 / 11, 2 ins, 1 del, 1 sub ]" in lines
    header = next(line for line in lines if "#Snt" in line)
    assert header.split("|")[1].split() == ["#Snt", "#Wrd"]
    assert header.split("|")[2].split() == ["Corr", "Sub", "Del", "Ins", "Err", "S.Err"]
    wer_row = next(line for line in lines if line.startswith("WER"))
    name, sizes, percents = (part.split() for part in wer_row.split("|"))
    assert name == ["WER"]
    assert sizes == ["3", "11"]
    # Corr 9/11, Sub 1/11, Del 1/11, Ins 2/11, Err 4/11, S.Err 2/3
    assert percents == ["81.8", "9.1", "9.1", "18.2", "36.4", "66.7"]
    assert not any(line.startswith("warning") for line in lines)


def test_format_summary_without_title_starts_with_header():
    text = format_summary(score(REFS, HYPS))
    assert "#Snt" in text.splitlines()[0]


# --------------------------------------------------------------------------- characters
#
# Characters, spaces included (as jiwer.cer and sclite count them):
# u1: "the cat sat on the mat" (22) vs "the cat sit on mat" (18): a->i and "the " deleted: S1 D4 -> 5 errors
#     (hyp is 4 shorter, so >= 4 deletions, and 'i' is not in the reference, so one more edit is needed)
# u2: 11 characters, no error
# u3: "a b c" (5) vs "a x b c d" (9): the reference is a subsequence of the hypothesis: I4
# total: 38 characters, 9 errors -> CER 23.68 %


def test_cer_by_hand():
    report = score(REFS, HYPS)
    c = report.chars
    # Spaces are characters too: 38 units and CER 23.68 % (30 and 20.00 % if spaces were dropped
    # from the character alignment).
    assert c.units == 38
    assert (c.substitutions, c.deletions, c.insertions) == (1, 4, 4)
    assert c.correct == 38 - 1 - 4
    assert report.cer == pytest.approx(100 * 9 / 38)
    assert "%CER 23.68 [ 9 / 38 ]" in format_summary(report)


def test_cer_small_example_without_spaces():
    # "kitten" -> "sitting": k->s, e->i, +g: S2 I1 over 6 characters = 50 %
    report = score({"a": "kitten"}, {"a": "sitting"})
    c = report.chars
    assert (c.units, c.correct, c.substitutions, c.deletions, c.insertions) == (6, 4, 2, 0, 1)
    assert report.cer == pytest.approx(50.0)
    assert report.wer == pytest.approx(100.0)


def test_cer_counts_word_boundaries():
    # The same letters with the space moved: two character substitutions (b->' ', ' '->b) out of 4.
    report = score({"a": "ab c"}, {"a": "a bc"})
    assert report.wer == pytest.approx(100.0)
    # A misplaced word boundary costs character errors: CER 50.0 over 4 units (0.0 over 3 if spaces
    # were dropped from the character alignment).
    assert report.chars.units == 4
    assert report.cer == pytest.approx(50.0)


def test_cer_agrees_with_jiwer():
    refs = ["the cat sat on the mat", "hello world", "a b c", "ab c"]
    hyps = ["the cat sit on mat", "hello world", "a x b c d", "a bc"]
    report = score(dict(zip("abcd", refs)), dict(zip("abcd", hyps)))
    # Spaces are scored, as by jiwer.cer (see test_cer_by_hand).
    assert report.cer == pytest.approx(100 * jiwer.cer(refs, hyps))


# --------------------------------------------------------------------------- normalization


def test_casing_and_punctuation_do_not_count():
    refs = {"a": "Hello, World!", "b": "Don't STOP -- believing.", "c": "Café déjà-vu"}
    hyps = {"a": "hello world", "b": "don’t stop believing", "c": "cafe deja vu"}
    report = score(refs, hyps)
    assert report.words.errors == 0
    assert report.chars.errors == 0
    assert report.words.units == 2 + 3 + 3
    assert report.wer == 0.0 and report.cer == 0.0
    assert report.words.utterance_errors == 0


def test_normalization_applies_to_both_sides_when_counting_errors():
    report = score({"a": "THE Cat."}, {"a": "the dog!"})
    assert (report.words.units, report.words.correct, report.words.substitutions) == (2, 1, 1)


# --------------------------------------------------------------------------- missing / extra / empty


def test_missing_hypothesis_counts_as_deletions():
    refs = {"u1": "one two three", "u2": "four five"}
    hyps = {"u1": "one two three"}
    report = score(refs, hyps)
    assert report.missing_hypotheses == ["u2"]
    w = report.words
    assert (w.units, w.correct, w.deletions, w.substitutions, w.insertions) == (5, 3, 2, 0, 0)
    assert w.utterance_errors == 1
    assert report.wer == pytest.approx(40.0)
    u2 = next(a for a in report.alignments if a.id == "u2")
    assert u2.ops == ["D", "D"] and u2.hyp == ["***", "***"]
    assert "warning: 1 references have no hypothesis" in format_summary(report)


def test_extra_hypothesis_is_ignored_and_listed():
    refs = {"u1": "one two"}
    hyps = {"u1": "one two", "zz": "lots of extra words here", "aa": "more"}
    report = score(refs, hyps)
    assert report.extra_hypotheses == ["aa", "zz"]
    assert report.words.units == 2 and report.words.errors == 0
    assert [a.id for a in report.alignments] == ["u1"]
    assert report.words.utterances == 1
    assert "warning: 2 hypotheses have no reference (ignored)" in format_summary(report)


def test_empty_reference_with_hypothesis_is_insertions():
    report = score({"e": "", "f": "x y"}, {"e": "a b", "f": "x y"})
    w = report.words
    assert (w.units, w.correct, w.insertions, w.deletions, w.substitutions) == (2, 2, 2, 0, 0)
    assert w.utterance_errors == 1
    assert report.wer == pytest.approx(100.0)
    e = next(a for a in report.alignments if a.id == "e")
    assert e.ops == ["I", "I"] and e.ref == ["***", "***"] and e.hyp == ["a", "b"]


def test_only_empty_references():
    assert score({"e": ""}, {"e": "a b"}).wer == 100.0
    assert score({"e": ""}, {"e": ""}).wer == 0.0
    assert score({"e": "!!"}, {"e": "..."}).wer == 0.0  # both empty after normalization


def test_error_counts_rate_and_pct():
    c = ErrorCounts(utterances=2, units=8, correct=6, substitutions=1, deletions=1, insertions=2, utterance_errors=1)
    assert c.errors == 4
    assert c.rate == 50.0
    assert c.pct(c.correct) == 75.0
    assert c.pct(1, 2) == 50.0
    assert ErrorCounts().pct(3) == 0.0
    assert ErrorCounts().rate == 0.0
    assert ErrorCounts(insertions=1).rate == 100.0


# --------------------------------------------------------------------------- against jiwer


WORDS = ["a", "the", "cat", "dog", "sat", "on", "mat", "ran", "big", "red"]


@pytest.mark.parametrize("seed", range(5))
def test_wer_agrees_with_jiwer_on_random_sentences(seed):
    rng = random.Random(seed)
    refs, hyps = {}, {}
    for i in range(8):
        ref = [rng.choice(WORDS) for _ in range(rng.randint(1, 10))]
        hyp = list(ref)
        for _ in range(rng.randint(0, 4)):  # random edits
            kind = rng.choice("sdi")
            if kind == "s" and hyp:
                hyp[rng.randrange(len(hyp))] = rng.choice(WORDS)
            elif kind == "d" and len(hyp) > 1:
                del hyp[rng.randrange(len(hyp))]
            else:
                hyp.insert(rng.randrange(len(hyp) + 1), rng.choice(WORDS))
        refs[f"utt{i}"], hyps[f"utt{i}"] = " ".join(ref), " ".join(hyp)
    ids = sorted(refs)
    report = score(refs, hyps)
    expected = jiwer.process_words([refs[i] for i in ids], [hyps[i] for i in ids])
    assert report.wer == pytest.approx(100 * jiwer.wer([refs[i] for i in ids], [hyps[i] for i in ids]))
    w = report.words
    assert (w.correct, w.substitutions, w.deletions, w.insertions) == (
        expected.hits, expected.substitutions, expected.deletions, expected.insertions
    )
    assert w.units == sum(len(refs[i].split()) for i in ids)


# --------------------------------------------------------------------------- alignments text


def test_format_alignments():
    text = format_alignments(score(REFS, HYPS))
    blocks = text.strip().split("\n\n")
    assert len(blocks) == 3
    u1 = blocks[0].splitlines()
    assert u1[0] == "id: u1"
    assert u1[1] == "Scores: (#C #S #D #I) 4 1 1 0"
    assert u1[2] == "REF:  the cat SAT on THE mat"
    assert u1[3] == "HYP:  the cat SIT on *** mat"
    assert u1[4].startswith("Eval:")
    # Eval letters sit under their columns.
    assert u1[4].index("S") == u1[2].index("SAT")
    assert u1[4].index("D") == u1[2].index("THE")
    assert u1[4].replace("Eval:", "").replace("S", "").replace("D", "").strip() == ""

    u2 = blocks[1].splitlines()
    assert u2[0] == "id: u2"
    assert u2[2] == "REF:  hello world" and u2[3] == "HYP:  hello world"
    assert u2[4].strip() == "Eval:"

    u3 = blocks[2].splitlines()
    assert u3[1] == "Scores: (#C #S #D #I) 3 0 0 2"
    assert u3[2] == "REF:  a *** b c ***"
    assert re.fullmatch(r"HYP:  a X +b c D", u3[3])
    assert u3[4].count("I") == 2
    assert [m.start() for m in re.finditer(r"\*\*\*", u3[2])] == [m.start() for m in re.finditer("I", u3[4])]


def test_format_alignments_deletion_only():
    text = format_alignments(score({"m": "one two"}, {}))
    assert "REF:  ONE TWO" in text
    assert "HYP:  *** ***" in text
    assert re.search(r"Eval: D +D", text)


# --------------------------------------------------------------------------- paired bootstrap


def _corpus(n: int, wrong_in_a: set[int], wrong_in_b: set[int]) -> tuple[dict, dict, dict]:
    """n utterances of 4 words; each listed utterance has one substituted word in that system."""
    refs = {f"u{i:03d}": "one two three four" for i in range(n)}
    a = {k: ("one two tree four" if i in wrong_in_a else v) for i, (k, v) in enumerate(refs.items())}
    b = {k: ("one two tree four" if i in wrong_in_b else v) for i, (k, v) in enumerate(refs.items())}
    return refs, a, b


def test_compare_rates_are_the_reports_rates_and_the_difference_is_b_minus_a():
    refs, a, b = _corpus(50, set(range(20)), set(range(5)))
    ra, rb = score(refs, a), score(refs, b)
    words, chars = compare(ra, rb, resamples=200)
    assert (words.unit, chars.unit) == ("WER", "CER")
    assert (words.a, words.b) == (pytest.approx(ra.wer), pytest.approx(rb.wer))  # 10.0 and 2.5
    assert (chars.a, chars.b) == (pytest.approx(ra.cer), pytest.approx(rb.cer))
    assert words.difference == pytest.approx(2.5 - 10.0)
    # B never makes more errors than A on any utterance: every resample favours it, or ties
    assert words.high <= 0 and words.low < words.difference < words.high
    assert words.b_better > 0.99 and (words.utterances, words.resamples) == (50, 200)


def test_compare_of_a_system_with_itself_is_zero_and_a_swap_mirrors_the_interval():
    refs, a, b = _corpus(40, {1, 5, 9, 30}, {2, 5, 31})
    ra, rb = score(refs, a), score(refs, b)
    assert [(c.difference, c.low, c.high, c.b_better) for c in compare(ra, ra)] == [(0.0, 0.0, 0.0, 0.0)] * 2
    forward, backward = compare(ra, rb, seed=3)[0], compare(rb, ra, seed=3)[0]
    assert backward.difference == pytest.approx(-forward.difference)
    assert (backward.low, backward.high) == (pytest.approx(-forward.high), pytest.approx(-forward.low))
    # a small difference on a few utterances: the interval straddles zero
    assert forward.low < 0 < forward.high and 0.2 < forward.b_better < 0.8
    assert compare(ra, rb, seed=3) == compare(ra, rb, seed=3)  # the seed fixes the draws


def test_compare_refuses_reports_of_different_references():
    refs, a, _ = _corpus(5, {1}, set())
    fewer = {k: v for k, v in list(refs.items())[:4]}
    with pytest.raises(ValueError, match="different utterances"):
        compare(score(refs, a), score(fewer, a))
    with pytest.raises(ValueError, match="resamples"):
        compare(score(refs, a), score(refs, a), resamples=0)


def test_format_comparison_names_both_systems():
    refs, a, b = _corpus(10, {1, 2}, {1})
    text = format_comparison(compare(score(refs, a), score(refs, b), resamples=100), "base.txt", "new.txt")
    assert text.splitlines()[:2] == ["A: base.txt", "B: new.txt"]
    assert re.search(r"WER A 5\.00  B 2\.50  B - A -2\.50 points, 95% interval \[[-+]\d+\.\d\d, [-+]\d+\.\d\d\]; "
                     r"B better in \d+\.\d% of 100 paired bootstrap resamples of the 10 utterances", text)
    assert "\nCER A " in text


# --------------------------------------------------------------------------- read_texts


def test_tally_errors_counts_each_word_error_by_hand():
    refs = {"a": "and the cat sat", "b": "and a dog", "c": "the end"}
    hyps = {"a": "in the cat sat down", "b": "in dog", "c": "the the end"}
    tally = tally_errors(score(refs, hyps))
    assert tally.substitutions == {("and", "in"): 2}
    assert tally.deletions == {"a": 1}
    assert tally.insertions == {"down": 1, "the": 1}
    assert tally.wrong == {"and": 2, "a": 1}
    assert tally.reference == {"and": 2, "the": 2, "cat": 1, "sat": 1, "a": 1, "dog": 1, "end": 1}
    report = score(refs, hyps)
    assert sum(tally.substitutions.values()) == report.words.substitutions
    assert sum(tally.deletions.values()) == report.words.deletions
    assert sum(tally.insertions.values()) == report.words.insertions


def test_format_errors_lists_the_most_frequent_first_and_stops_at_top():
    refs = {"a": "x y z", "b": "x y", "c": "x"}
    hyps = {"a": "q y", "b": "q w", "c": "r"}
    text = format_errors(tally_errors(score(refs, hyps)), top=1)
    lines = text.splitlines()
    assert lines[0] == "SUBSTITUTIONS (4 in all; ref ==> hyp)" and lines[1] == "     2  x ==> q"
    assert lines[2] == "DELETIONS (1 in all)" and lines[3] == "     1  z"
    assert lines[4] == "INSERTIONS (0 in all)"
    assert lines[5].startswith("REFERENCE WORDS MOST OFTEN WRONG") and lines[6] == "     3 / 3      x"
    assert len(lines) == 7


def test_read_texts_manifest(tmp_path):
    path = tmp_path / "m.jsonl"
    lines = [
        {"id": "b", "audio": "b.wav", "duration": 1.0, "text": "hello there"},
        {"id": "a", "audio": "a.wav", "duration": 2.0, "text": "general kenobi"},
        {"id": 7, "audio": "c.wav", "duration": 2.0},  # no text, numeric id
    ]
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n\n", encoding="utf-8")
    assert read_texts(path) == {"b": "hello there", "a": "general kenobi", "7": ""}


def test_read_texts_tab_and_kaldi(tmp_path):
    tab = tmp_path / "hyp.txt"
    tab.write_text("u1\thello  world\nu2\t\nu3\tone two\tthree\n", encoding="utf-8")
    assert read_texts(tab) == {"u1": "hello  world", "u2": "", "u3": "one two\tthree"}

    kaldi = tmp_path / "text"
    kaldi.write_text("spk-1 the cat sat\nspk-2\n\nspk-3 x\n", encoding="utf-8")
    assert read_texts(kaldi) == {"spk-1": "the cat sat", "spk-2": "", "spk-3": "x"}


def test_read_texts_duplicate_id(tmp_path):
    path = tmp_path / "dup.txt"
    path.write_text("a\tone\nb\ttwo\n\na\tthree\n", encoding="utf-8")
    with pytest.raises(ValueError) as e:
        read_texts(path)
    assert f"{path}:4" in str(e.value)
    assert "'a'" in str(e.value)


def test_read_texts_duplicate_id_in_manifest(tmp_path):
    path = tmp_path / "dup.jsonl"
    path.write_text('{"id": "a", "text": "x"}\n{"id": "a", "text": "y"}\n', encoding="utf-8")
    with pytest.raises(ValueError, match=re.escape(f"{path}:2")):
        read_texts(path)


def test_read_texts_bad_manifest_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"id": "a", "text": "x"}\n{"text": "no id"}\n', encoding="utf-8")
    with pytest.raises(ValueError, match=re.escape(f"{path}:2")):
        read_texts(path)


def test_read_texts_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        read_texts(tmp_path / "nope.txt")
    with pytest.raises(FileNotFoundError):
        read_texts(tmp_path)  # a folder is not a text file


def test_read_texts_then_score_round_trip(tmp_path):
    ref = tmp_path / "ref.jsonl"
    ref.write_text("\n".join(json.dumps({"id": k, "text": v}) for k, v in REFS.items()) + "\n", encoding="utf-8")
    hyp = tmp_path / "hyp.txt"
    hyp.write_text("".join(f"{k}\t{v}\n" for k, v in HYPS.items()), encoding="utf-8")
    report = score(read_texts(ref), read_texts(hyp))
    assert report.wer == pytest.approx(100 * 4 / 11)


def test_read_texts_refuses_a_text_that_is_not_a_string(tmp_path):
    """str(None) would be scored as the word "none"."""
    path = tmp_path / "hyp.jsonl"
    path.write_text('{"id": "a", "text": "x"}\n{"id": "b", "text": null}\n', encoding="utf-8")
    with pytest.raises(ValueError, match=re.escape(f'{path}:2: "text" is null, not a string')):
        read_texts(path)

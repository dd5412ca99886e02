"""asr.text: the normalizer, the character tokenizer and BPE units (sentencepiece) through training,
checkpoints, decoding, word timestamps and lexicons."""

from __future__ import annotations

import io
import json
import random
import subprocess
import sys
from contextlib import redirect_stdout
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from asr.text import (
    BLANK,
    BPETokenizer,
    CharTokenizer,
    TokenizerConfig,
    build_tokenizer,
    normalize,
    tokenizer_from_dict,
    train_bpe,
)

ALPHABET = set("abcdefghijklmnopqrstuvwxyz' ")


# --------------------------------------------------------------------------- normalize


@pytest.mark.parametrize(
    "raw, expected",
    [
        # the docstring's example
        ('Café  Déjà-vu, "Don\u2019t"!', "cafe deja vu don't"),
        # casing
        ("HELLO World", "hello world"),
        ("MiXeD CaSe", "mixed case"),
        # punctuation
        ("Hello, world! How are you? Fine; thanks.", "hello world how are you fine thanks"),
        ("(parenthesised) [bracketed] {braced}", "parenthesised bracketed braced"),
        ("end.", "end"),
        ("a/b\\c|d", "a b c d"),
        # apostrophes inside words are kept, curly and modifier apostrophes become ASCII
        ("don't", "don't"),
        ("Don\u2019t", "don't"),
        ("don\u02bct", "don't"),
        ("don`t", "don't"),
        ("James's", "james's"),
        ("o'clock", "o'clock"),
        # quotes around words are removed
        ("'quoted'", "quoted"),
        ("\u2018single curly\u2019", "single curly"),
        ('"double" quotes', "double quotes"),
        ("\u201cdouble curly\u201d", "double curly"),
        ("she said 'don't'", "she said don't"),
        ("rock 'n' roll", "rock n roll"),
        ("the boys' toys", "the boys toys"),
        ("' lone '", "lone"),
        ("''", ""),
        # accents are stripped
        ("naïve résumé", "naive resume"),
        ("Ångström façade", "angstrom facade"),
        ("El Niño", "el nino"),
        # compatibility characters
        ("\ufb01ne", "fine"),  # fi ligature
        ("\uff21\uff22\uff23", "abc"),  # full-width letters
        # hyphens and dashes split words
        ("well-known", "well known"),
        ("twenty-one", "twenty one"),
        ("a -- b", "a b"),
        ("em\u2014dash", "em dash"),
        # whitespace collapses, including tabs and newlines, and is stripped
        ("  lots   of\tspace\n\nhere  ", "lots of space here"),
        ("\u00a0non\u00a0breaking\u00a0", "non breaking"),
        # digits are removed (they must be spelled out in transcripts)
        ("room 101 is here", "room is here"),
        ("abc123def", "abc def"),
        ("1984", ""),
        # nothing left
        ("", ""),
        ("?!.,", ""),
        ("   ", ""),
    ],
)
def test_normalize_examples(raw, expected):
    assert normalize(raw) == expected


def test_normalize_acute_accent_as_apostrophe():
    # "\u00b4" (ACUTE ACCENT, a common stand-in for an apostrophe) must be mapped before NFKD, which
    # would decompose it into " " + a combining acute and split "don\u00b4t" into two words.
    assert normalize("don\u00b4t") == "don't"


def test_normalize_output_alphabet_on_examples():
    for text in ["Straße", "Ærøskøbing", "日本語 text", "emoji \U0001f600 here", "x\u0301y"]:
        out = normalize(text)
        assert set(out) <= ALPHABET
        assert out == out.strip() and "  " not in out


# --------------------------------------------------------------------------- tokenizer


def test_default_tokenizer_layout():
    tok = CharTokenizer()
    assert tok.blank == 0
    assert tok.symbols[0] == BLANK
    assert tok.symbols[1] == " "
    assert len(tok) == 29
    assert set(tok.symbols[1:]) == ALPHABET
    assert tok.encode(" ") == [1]
    assert tok.encode("a") != [0]
    assert 0 not in tok.encode("abc xyz's")


@pytest.mark.parametrize(
    "text",
    ["", "a", "hello world", "don't stop", "the quick brown fox jumps over the lazy dog", "james's o'clock"],
)
def test_round_trip(text):
    tok = CharTokenizer()
    ids = tok.encode(text)
    assert len(ids) == len(text)
    assert all(isinstance(i, int) and 0 < i < len(tok) for i in ids)
    assert tok.decode(ids) == text


def test_decode_drops_blanks_and_tidies_spaces():
    tok = CharTokenizer()
    h, i, space = tok.encode("h")[0], tok.encode("i")[0], tok.encode(" ")[0]
    assert tok.decode([0, h, 0, 0, i, 0]) == "hi"
    assert tok.decode([space, h, space, space, i, space]) == "h i"
    assert tok.decode([]) == ""
    assert tok.decode([0, 0]) == ""


@pytest.mark.parametrize("text, bad", [("hello!", "!"), ("Hello", "H"), ("caf\u00e9", "\u00e9"), ("a1b", "1")])
def test_encode_rejects_unknown_characters(text, bad):
    tok = CharTokenizer()
    with pytest.raises(ValueError) as info:
        tok.encode(text)
    assert repr(bad)[1:-1] in str(info.value) or bad in str(info.value)
    assert tok.unknown_chars(text) == {bad}


def test_encode_error_names_all_bad_characters():
    with pytest.raises(ValueError) as info:
        CharTokenizer().encode("A-b?")
    message = str(info.value)
    for bad in "A-?":
        assert bad in message


def test_to_dict_from_dict_round_trip():
    tok = CharTokenizer()
    data = tok.to_dict()
    assert data["type"] == "char"
    again = CharTokenizer.from_dict(data)
    assert again.symbols == tok.symbols
    assert again.encode("round trip") == tok.encode("round trip")

    custom = CharTokenizer([BLANK, " ", "x", "y", "z"])
    restored = CharTokenizer.from_dict(custom.to_dict())
    assert restored.symbols == [BLANK, " ", "x", "y", "z"]
    assert len(restored) == 5
    assert restored.decode(restored.encode("xy zz")) == "xy zz"
    with pytest.raises(ValueError):
        restored.encode("a")


def test_from_dict_rejects_other_types():
    with pytest.raises(ValueError, match="bpe"):
        CharTokenizer.from_dict({"type": "bpe", "symbols": [BLANK, "a"]})
    with pytest.raises(ValueError):
        CharTokenizer.from_dict({"symbols": [BLANK, "a"]})


def test_constructor_validates_symbols():
    with pytest.raises(ValueError, match="blank"):
        CharTokenizer(["a", BLANK])
    with pytest.raises(ValueError, match="unique"):
        CharTokenizer([BLANK, "a", "a"])


# --------------------------------------------------------------------------- properties

_tricky = st.sampled_from(
    list("'\u2019\u2018\u02bc`\u00b4\"-\u2014 \t\n\u00a0.,!?0123456789")
    + ["\u0301", "\u0308", "\u00e9", "\u00df", "\ufb01", "\u0130", "\u212a", "\uff07", "\U0001f600", "\u01c4"]
)
_texts = st.one_of(
    st.text(),
    st.text(alphabet=st.one_of(st.characters(), _tricky), max_size=60),
    st.text(alphabet=st.one_of(st.sampled_from(list("abcxyzABC' -")), _tricky), max_size=40),
)


@settings(max_examples=300, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(_texts)
@example("'a'b'")
@example("a''b")
@example("-'-")
@example("\u0130\u0307")
def test_normalize_properties(text):
    tok = CharTokenizer()
    out = normalize(text)  # never raises
    assert isinstance(out, str)
    assert set(out) <= set(tok.symbols[1:])
    assert out == out.strip()
    assert "  " not in out
    ids = tok.encode(out)  # never raises
    assert tok.decode(ids) == out
    assert normalize(out) == out  # idempotent


# --------------------------------------------------------------------------- BPE units

ROOT = Path(__file__).resolve().parents[1]
WORDS = ["the", "cat", "sat", "on", "mat", "a", "dog", "ran", "don't", "quick", "brown", "fox", "jumps", "over",
         "lazy", "james's", "zebra", "xylophone", "quiz", "that", "there", "then", "when"]


def _sentences(n: int = 400, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 10))) for _ in range(n)]


@pytest.fixture(scope="module")
def bpe() -> BPETokenizer:
    return train_bpe(_sentences(), 64)


def test_bpe_layout(bpe):
    assert len(bpe) == 64 and bpe.blank == 0 and bpe.symbols[0] == BLANK
    assert bpe.word_separator is None
    assert bpe.word_start_ids == {i for i, p in enumerate(bpe.symbols) if p.startswith("\u2581")}
    assert 0 not in bpe.word_start_ids
    # every character of the alphabet has a piece, even those the transcripts lack
    assert {"\u2581", "'", *"abcdefghijklmnopqrstuvwxyz"} <= set(bpe.symbols)
    assert all("\u2581" not in p[1:] for p in bpe.symbols)  # no piece spans two words
    assert len(bpe.encode("the quick brown fox")) < len("the quick brown fox")  # merges happened
    assert bpe.lexicon_tokens == bpe.symbols


@settings(max_examples=200, deadline=None, database=None)
@given(_texts)
@example("the cat sat on the mat")
@example("xylophone's quiz")
def test_bpe_round_trip_on_normalized_text(bpe, text):
    text = normalize(text)
    ids = bpe.encode(text)
    assert all(0 < i < len(bpe) for i in ids)
    assert bpe.decode(ids) == text
    assert bpe.decode(ids) == bpe.processor().decode(ids)  # our piece join agrees with sentencepiece
    # Words encoded one by one give the same pieces as the whole text: what word timestamps rely on.
    assert [i for w in text.split() for i in bpe.encode(w)] == ids
    assert sum(i in bpe.word_start_ids for i in ids) == len(text.split())


def test_bpe_encode_rejects_characters_without_pieces(bpe):
    with pytest.raises(ValueError, match="'!H'"):
        bpe.encode("Hello!")
    assert bpe.unknown_chars("caf\u00e9 x") == {"\u00e9"}


def test_bpe_training_is_deterministic():
    texts = _sentences(seed=3)
    first, second = train_bpe(texts, 50), train_bpe(list(texts), 50)
    assert first.symbols == second.symbols and first.model_proto == second.model_proto
    assert train_bpe(_sentences(seed=4), 50).symbols != first.symbols  # and depends on the text
    # A corpus too small for the asked size gives fewer units, not an error.
    assert 29 < len(train_bpe(["a bad cab", "dead beef"], 256)) < 256


def test_bpe_training_errors():
    with pytest.raises(ValueError, match="vocab_size=20 is too small.*at least 29"):
        train_bpe(_sentences(), 20)
    with pytest.raises(ValueError, match="no transcripts"):
        train_bpe(["", "  "], 64)
    assert len(train_bpe(_sentences(), 29)) == 29  # characters only: the smallest size


def test_build_tokenizer_from_config(bpe, tmp_path):
    assert isinstance(build_tokenizer(TokenizerConfig(), ["anything"]), CharTokenizer)
    trained = build_tokenizer(TokenizerConfig(units="bpe", vocab_size=64), _sentences())
    assert trained.symbols == bpe.symbols
    model = tmp_path / "units.model"
    model.write_bytes(bpe.model_proto)
    reused = build_tokenizer(TokenizerConfig(units="bpe", vocab_size=999, model=str(model)), [])
    assert reused.symbols == bpe.symbols and reused.encode("the cat") == bpe.encode("the cat")
    with pytest.raises(ValueError, match="tokenizer.units must be char or bpe, got 'wordpiece'"):
        build_tokenizer(TokenizerConfig(units="wordpiece"), [])
    with pytest.raises(FileNotFoundError, match="missing.model"):
        build_tokenizer(TokenizerConfig(units="bpe", model=str(tmp_path / "missing.model")), [])
    (tmp_path / "junk.model").write_bytes(b"not a model")
    with pytest.raises(ValueError, match="junk.model.*not a sentencepiece model"):
        build_tokenizer(TokenizerConfig(units="bpe", model=str(tmp_path / "junk.model")), [])


def test_reused_model_must_fit_ctc(tmp_path):
    """A sentencepiece model with the default <s> </s> pieces (or <unk> elsewhere than 0) is refused."""
    import sentencepiece as spm

    proto = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(_sentences()), model_writer=proto, model_type="bpe",
                                   vocab_size=60, minloglevel=2, num_threads=1)
    path = tmp_path / "default_ids.model"
    path.write_bytes(proto.getvalue())
    with pytest.raises(ValueError, match=r"default_ids.model.*special piece '<s>' at id 1.*--bos_id=-1"):
        build_tokenizer(TokenizerConfig(units="bpe", model=str(path)), [])


def test_tokenizer_dicts_round_trip(bpe):
    data = bpe.to_dict()
    assert data["type"] == "bpe" and data["symbols"][0] == BLANK and isinstance(data["model"], bytes)
    again = tokenizer_from_dict(data)
    assert isinstance(again, BPETokenizer) and again.symbols == bpe.symbols
    assert again.encode("the lazy dog") == bpe.encode("the lazy dog")
    assert again.word_start_ids == bpe.word_start_ids
    # A checkpoint written before BPE units existed holds {"type": "char", "symbols": [...]}.
    old = {"type": "char", "symbols": [BLANK, " ", "'", *"abcdefghijklmnopqrstuvwxyz"]}
    char = tokenizer_from_dict(old)
    assert isinstance(char, CharTokenizer) and char.symbols == old["symbols"] and char.word_separator == 1
    assert char.word_start_ids == {1}
    with pytest.raises(ValueError, match="unknown tokenizer type 'wordpiece'"):
        tokenizer_from_dict({"type": "wordpiece", "symbols": [BLANK]})
    with pytest.raises(ValueError, match="unknown tokenizer type None"):
        tokenizer_from_dict({"symbols": [BLANK]})


def test_without_sentencepiece_decoding_works_and_encoding_names_the_extra(bpe, monkeypatch):
    restored = tokenizer_from_dict(bpe.to_dict())
    monkeypatch.setitem(sys.modules, "sentencepiece", None)  # import raises ImportError
    ids = bpe.encode("the cat")
    assert restored.decode(ids) == "the cat"  # transcribing needs only the pieces
    with pytest.raises(RuntimeError, match=r"BPE units need sentencepiece: pip install 'asr\[bpe\]'"):
        restored.encode("the cat")
    with pytest.raises(RuntimeError, match=r"pip install 'asr\[bpe\]'"):
        train_bpe(_sentences(), 64)


def test_importing_asr_does_not_need_sentencepiece():
    code = ("import sys; sys.modules['sentencepiece'] = None\n"
            "import asr.cli, asr.training, asr.decode, asr.align, asr.transcribe, asr.checkpoint, asr.lm\n"
            "from asr.config import load_config\n"
            "assert load_config(None, ['tokenizer.units=bpe']).tokenizer.units == 'bpe'\n")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_checkpoint_round_trip_with_bpe_units(bpe, tmp_path):
    from asr.checkpoint import load_model, save_checkpoint
    from asr.config import load_config
    from asr.model import CTCModel

    config = load_config(None, ["model.hidden_size=16", "model.num_layers=1", "tokenizer.units=bpe"])
    model = CTCModel(config.features, config.model, len(bpe))
    save_checkpoint(tmp_path / "m.pt", {"config": config.to_dict(), "tokenizer": bpe.to_dict(), "model": model.state_dict()})
    loaded, tokenizer, cfg = load_model(tmp_path / "m.pt")
    assert isinstance(tokenizer, BPETokenizer) and tokenizer.symbols == bpe.symbols
    assert tokenizer.encode("over the lazy dog") == bpe.encode("over the lazy dog")
    assert cfg.tokenizer.units == "bpe" and loaded.output.out_features == len(bpe)


def _one_hot_log_probs(frames: list[int], vocab: int, p: float = 0.9) -> torch.Tensor:
    """(T, V) log-probs whose best label in frame t is frames[t], with probability p."""
    probs = torch.full((len(frames), vocab), (1 - p) / (vocab - 1))
    probs[torch.arange(len(frames)), torch.tensor(frames)] = p
    return probs.log()


def test_greedy_and_beam_decode_bpe_ids(bpe):
    from asr.decode import GreedyDecoder, PrefixBeamDecoder, greedy_decode

    ids = bpe.encode("the cat sat on the mat")
    frames = []
    for i in ids:  # each piece held for 1-2 frames, blanks between some
        frames += [i] * (1 + i % 2) + [0] * (i % 3 == 0)
    log_probs = _one_hot_log_probs(frames, len(bpe))[None]
    lengths = torch.tensor([len(frames)])
    assert greedy_decode(log_probs, lengths) == [ids]
    assert GreedyDecoder(bpe)(log_probs, lengths)[0][0].text == "the cat sat on the mat"
    for beam in (1, 8):
        assert PrefixBeamDecoder(bpe, beam)(log_probs, lengths)[0][0].text == "the cat sat on the mat"


def test_word_timestamps_group_bpe_pieces(bpe):
    from asr.align import word_timings

    words = ["the", "xylophone", "sat"]
    pieces = [bpe.encode(w) for w in words]
    assert len(pieces[1]) > 1  # a word of several pieces
    frames, spans = [0, 0], []
    for word_ids in pieces:
        start = len(frames)
        for i in word_ids:
            frames += [i, i, 0]
        spans.append((start, len(frames) - 1))  # the last piece's last frame is len - 2
        frames += [0, 0, 0]
    timings = word_timings(_one_hot_log_probs(frames, len(bpe)), " ".join(words), bpe, 0.03)
    assert [t.word for t in timings] == words
    for timing, (start, stop) in zip(timings, spans):
        assert timing.start == pytest.approx(start * 0.03)
        assert timing.end == pytest.approx(stop * 0.03)
        assert timing.confidence == pytest.approx(0.9, abs=1e-3)


def test_lexicon_spellings(bpe, tmp_path):
    from asr.lm import write_lexicon

    assert CharTokenizer().spell("don't") == ["d", "o", "n", "'", "t", "|"]
    assert CharTokenizer([BLANK, "a", "b"]).spell("ab") == ["a", "b"]  # no space, no separator
    assert bpe.spell("xylophone") == [bpe.symbols[i] for i in bpe.encode("xylophone")]
    assert bpe.spell("the")[0].startswith("\u2581")
    with pytest.raises(ValueError, match="no spaces"):
        bpe.spell("the cat")
    assert write_lexicon(["the", "zebra"], tmp_path / "lex.txt", spell=bpe.spell) == 2
    assert (tmp_path / "lex.txt").read_text() == f"the\t{' '.join(bpe.spell('the'))}\nzebra\t{' '.join(bpe.spell('zebra'))}\n"
    # characters + '|' like the default lexicon
    write_lexicon(["cat"], tmp_path / "char.txt", spell=CharTokenizer().spell)
    write_lexicon(["cat"], tmp_path / "default.txt")
    assert (tmp_path / "char.txt").read_text() == (tmp_path / "default.txt").read_text() == "cat\tc a t |\n"
    with pytest.raises(ValueError, match="cannot spell 'c\u00e9'"):
        write_lexicon(["c\u00e9"], tmp_path / "bad.txt", spell=bpe.spell)


def _posteriorgram(tok, frames: list[dict[str, float]]) -> torch.Tensor:
    rows = []
    for frame in frames:
        row = torch.full((len(tok),), 1e-4)
        for symbol, p in frame.items():
            row[tok.symbols.index(symbol)] = p
        row[0] = max(1.0 - float(row.sum() - row[0]), 1e-4)
        rows.append(row / row.sum())
    return torch.stack(rows).log()[None]


def test_beam_lm_with_bpe_lexicon(tmp_path):
    pytest.importorskip("flashlight.lib.text")
    from asr.decode import GreedyDecoder, make_decoder
    from asr.lm import build_ngram_model, write_arpa, write_lexicon

    texts = ["the cat sat", "the cat ran", "a cat sat on the mat", "the dog ran", "the mat"] * 3
    tok = train_bpe(texts, 45)
    for word in ("the", "cat", "mat", "sat"):
        assert len(tok.spell(word)) == 1, tok.spell(word)  # whole-word pieces, as the frames below assume
    words = ["the", "cat", "sat", "ran", "a", "on", "mat", "dog"]
    write_arpa(build_ngram_model(texts, order=2), tmp_path / "lm.arpa")
    write_lexicon(words, tmp_path / "lexicon.txt", spell=tok.spell)
    # The acoustics slightly prefer "mat sat", which the LM has never seen; "cat sat" it has.
    frames = [{"\u2581the": 0.9}, {}, {"\u2581mat": 0.5, "\u2581cat": 0.45}, {}, {"\u2581sat": 0.9}, {}]
    log_probs, lengths = _posteriorgram(tok, frames), torch.tensor([len(frames)])
    assert GreedyDecoder(tok)(log_probs, lengths)[0][0].text == "the mat sat"
    decoder = make_decoder("beam-lm", tok, lm=str(tmp_path / "lm.arpa"), lexicon=str(tmp_path / "lexicon.txt"),
                           beam_size=20, lm_weight=1.0, nbest=2)
    nbest = decoder(log_probs, lengths)[0]
    assert nbest[0].text == "the cat sat" and [tok.symbols[i] for i in nbest[0].tokens] == ["\u2581the", "\u2581cat", "\u2581sat"]
    # Each piece held for two frames: a word ends at its last piece, and the frames that still hold
    # it go to flashlight's silence token without costing a second word ("the mat cat sat").
    held = [frame for frame in frames if frame for _ in range(2)]
    log_probs, lengths = _posteriorgram(tok, held), torch.tensor([len(held)])
    assert decoder(log_probs, lengths)[0][0].text == "the cat sat"
    without_lm = make_decoder("beam-lm", tok, lexicon=str(tmp_path / "lexicon.txt"), beam_size=20, nbest=3)
    assert [h.text for h in without_lm(log_probs, lengths)[0][:2]] == ["the mat sat", "the cat sat"]
    # A word of several pieces ("on" is '\u2581 on'), with and without a lexicon (no LM).
    assert len(tok.spell("on")) == 2
    frames = [{"\u2581cat": 0.9}, {}] + [{piece: 0.9} for piece in tok.spell("on")] + [{}]
    for kwargs in ({"lexicon": str(tmp_path / "lexicon.txt")}, {}):
        found = make_decoder("beam-lm", tok, beam_size=10, **kwargs)(_posteriorgram(tok, frames), torch.tensor([5]))
        assert found[0][0].text == "cat on"
    with pytest.raises(ValueError, match="needs a --lexicon spelt in its pieces"):
        make_decoder("beam-lm", tok, lm=str(tmp_path / "lm.arpa"))
    write_lexicon(words, tmp_path / "char_lexicon.txt")  # spelt in characters: not this model's units
    with pytest.raises(ValueError, match=r"char_lexicon.txt, line 1: the spelling of 'the' uses '\|'.*--model CKPT"):
        make_decoder("beam-lm", tok, lexicon=str(tmp_path / "char_lexicon.txt")).ready()  # built in a process of its own


BPE_TRAIN = [
    "model.subsampling=stack", "model.subsampling_factor=2", "model.hidden_size=32", "model.num_layers=1",
    "features.n_mels=24", "specaug.freq_masks=0", "specaug.time_masks=0", "train.epochs=2", "train.max_batch_seconds=4",
    "train.warmup_steps=2", "train.num_workers=0", "train.log_every=2", "train.device=cpu",
    "tokenizer.units=bpe", "tokenizer.vocab_size=40",
]


def test_train_with_bpe_units_then_transcribe_and_lexicon(tmp_path, capsys):
    """A few updates with BPE units on generated speech: the checkpoint holds the BPE model, and
    `asr transcribe` (greedy, beam, word timestamps) and `asr lm lexicon --model` use it."""
    from asr.checkpoint import read_checkpoint
    from asr.cli import main as asr_main
    from asr.config import load_config
    from asr.data import read_manifest
    from asr.training import train
    from synth import TRANSCRIPTS, write_synth_corpus

    torch.set_num_threads(1)
    manifest = write_synth_corpus(tmp_path / "corpus")
    utts = read_manifest(manifest)
    train(load_config(None, BPE_TRAIN), utts, utts[:2], tmp_path / "exp")
    payload = read_checkpoint(tmp_path / "exp" / "last.pt")
    assert payload["tokenizer"]["type"] == "bpe" and len(payload["tokenizer"]["symbols"]) == 40
    assert payload["config"]["tokenizer"] == {"units": "bpe", "vocab_size": 40, "model": ""}
    tokenizer = tokenizer_from_dict(payload["tokenizer"])
    assert tokenizer.symbols == train_bpe(TRANSCRIPTS, 40).symbols  # trained on the training transcripts
    assert payload["model"]["output.weight"].shape[0] == 40

    checkpoint, wav = str(tmp_path / "exp" / "last.pt"), utts[0].audio
    for extra in ([], ["--decoder", "beam", "--beam-size", "4"]):
        assert asr_main(["transcribe", checkpoint, wav, "--device", "cpu", *extra]) == 0
        path, text = capsys.readouterr().out.rstrip("\n").split("\t")
        assert path == wav and set(text) <= set(" abcdef'")  # pieces decoded to text
    buffer = io.StringIO()
    with redirect_stdout(buffer):
        assert asr_main(["transcribe", checkpoint, wav, "--device", "cpu", "--timestamps", "--format", "json"]) == 0
    result = json.loads(buffer.getvalue())
    assert [w["word"] for w in result["words"]] == result["text"].split()

    vocab = tmp_path / "words.txt"
    vocab.write_text("bead\ncafe\nzebra\n")
    assert asr_main(["lm", "lexicon", str(vocab), "--out", str(tmp_path / "lex.txt"), "--model", checkpoint]) == 0
    lines = (tmp_path / "lex.txt").read_text().splitlines()
    assert lines == [f"{w}\t{' '.join(tokenizer.spell(w))}" for w in ("bead", "cafe", "zebra")]
    assert lines[0].split("\t")[1].startswith("\u2581")
    assert asr_main(["lm", "lexicon", str(vocab), "--out", str(tmp_path / "x.txt"), "--model", checkpoint,
                     "--word-separator", "|"]) == 2
    assert "exclude each other" in capsys.readouterr().err

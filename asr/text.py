"""Text normalization and the tokenizers: characters, or sentencepiece BPE pieces.

The normalizer maps any transcript to the alphabet the models are trained on: lower-case a-z,
apostrophe and single spaces. The same function is applied to references before scoring, so a
reported WER never counts casing or punctuation.

Both tokenizers offer the same plain interface (`Tokenizer`): encode/decode, the blank id 0, the
word separator if there is one, spellings for flashlight lexicons, and `to_dict` for checkpoints.
`tokenizer_from_dict` rebuilds either from a checkpoint; `build_tokenizer` makes the one the
`tokenizer` config section asks for at the start of training.
"""

from __future__ import annotations

import io
import logging
import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Protocol, Sequence

log = logging.getLogger(__name__)

_APOSTROPHES = str.maketrans({"\u2019": "'", "\u2018": "'", "\u02bc": "'", "`": "'", "\u00b4": "'"})
_OUTSIDE_ALPHABET = re.compile(r"[^a-z' ]+")
_SPACES = re.compile(r" +")
# An apostrophe only belongs inside a word ("don't", "james's"); quotes around words are dropped.
_STRAY_APOSTROPHE = re.compile(r"(?<![a-z])'|'(?![a-z])")


def normalize(text: str) -> str:
    """'Café  Déjà-vu, "Don’t"!' -> "cafe deja vu don't" """
    # Apostrophe look-alikes first: NFKD would split the acute accent into a space and a combining mark.
    text = unicodedata.normalize("NFKD", text.translate(_APOSTROPHES))
    text = "".join(c for c in text if not unicodedata.combining(c)).lower()
    text = text.replace("-", " ")
    text = _OUTSIDE_ALPHABET.sub(" ", text)
    text = _STRAY_APOSTROPHE.sub(" ", text)
    return _SPACES.sub(" ", text).strip()


BLANK = "<blank>"
ALPHABET = "abcdefghijklmnopqrstuvwxyz'"  # what `normalize` leaves, besides the space
LEXICON_SEPARATOR = "|"  # the space as flashlight lexicons and token lists spell it
WORD_START = "\u2581"  # sentencepiece's mark for a space, at the start of the first piece of each word
BPE_EXTRA_HINT = "pip install 'asr[bpe]'"


@dataclass
class TokenizerConfig:
    units: str = "char"  # char | bpe: the model's output units (sentencepiece BPE pieces, trained on the training transcripts)
    vocab_size: int = 256  # bpe: output units including the CTC blank (fewer when the transcripts allow no more merges)
    model: str = ""  # bpe: an existing sentencepiece .model to use instead of training one (unk_id 0, no bos/eos/pad)


class Tokenizer(Protocol):
    """What the rest of the package uses of a tokenizer; CharTokenizer and BPETokenizer have it."""

    symbols: list[str]  # id -> unit as text; symbols[0] is BLANK
    lexicon_tokens: list[str]  # id -> the token's name in flashlight lexicons and token lists (no spaces)
    word_separator: int | None  # id of the unit that stands between words (char: the space), None if words start with a marked unit (bpe)
    word_start_ids: frozenset[int]  # ids of the units that begin a word (char: the space; bpe: the pieces starting with '\u2581')

    @property
    def blank(self) -> int: ...

    def __len__(self) -> int: ...

    def unknown_chars(self, text: str) -> set[str]: ...

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: Iterable[int]) -> str: ...

    def spell(self, word: str) -> list[str]: ...

    def to_dict(self) -> dict: ...


class _Units:
    """What both tokenizers share: id i stands for symbols[i], id 0 is the CTC blank, and `_chars`
    are the characters the units can spell."""

    symbols: list[str]
    _chars: set[str]

    @property
    def blank(self) -> int:
        return 0

    def __len__(self) -> int:
        return len(self.symbols)

    def unknown_chars(self, text: str) -> set[str]:
        """Characters of `text` that no unit holds."""
        return {c for c in text if c not in self._chars}


class CharTokenizer(_Units):
    """Characters to CTC label ids and back. Id 0 is the CTC blank; id 1 is the word separator (space).

    The symbol list is stored in checkpoints (`to_dict`), so a model always decodes with its own table.
    """

    def __init__(self, symbols: Iterable[str] | None = None):
        # This order (apostrophe before the letters) is what every char checkpoint so far was trained with:
        # a different order changes the training run's random outcome.
        self.symbols: list[str] = list(symbols) if symbols is not None else [BLANK, " ", "'", *ALPHABET.replace("'", "")]
        if self.symbols[0] != BLANK:
            raise ValueError(f"the first symbol must be the blank {BLANK!r}, got {self.symbols[0]!r}")
        if len(set(self.symbols)) != len(self.symbols):
            raise ValueError("tokenizer symbols must be unique")
        self._ids = {s: i for i, s in enumerate(self.symbols)}
        self._chars = set(self.symbols[1:])
        self.word_separator: int | None = self._ids.get(" ")
        self.word_start_ids = frozenset() if self.word_separator is None else frozenset({self.word_separator})
        self.lexicon_tokens = [LEXICON_SEPARATOR if s == " " else s for s in self.symbols]

    def encode(self, text: str) -> list[int]:
        """Normalized text -> label ids. Raises ValueError naming characters that have no label."""
        try:
            return [self._ids[c] for c in text]
        except KeyError:
            bad = "".join(sorted(self.unknown_chars(text)))
            raise ValueError(f"characters outside the tokenizer's alphabet: {bad!r} in {text!r}") from None

    def decode(self, ids: Iterable[int]) -> str:
        """Label ids (blanks already removed) -> text with single spaces and no leading/trailing space."""
        text = "".join(self.symbols[i] for i in ids if i != 0)
        return _SPACES.sub(" ", text).strip()

    def spell(self, word: str) -> list[str]:
        """A word's spelling in `lexicon_tokens`: its characters, then the separator '|' when the
        alphabet has a space ('c a t |'): flashlight completes a word at the token that ends its spelling."""
        _check_word(word)
        ids = self.encode(word) + ([self.word_separator] if self.word_separator is not None else [])
        return [self.lexicon_tokens[i] for i in ids]

    def to_dict(self) -> dict:
        return {"type": "char", "symbols": self.symbols}

    @classmethod
    def from_dict(cls, data: dict) -> "CharTokenizer":
        if data.get("type") != "char":
            raise ValueError(f"unknown tokenizer type {data.get('type')!r}")
        return cls(data["symbols"])


class BPETokenizer(_Units):
    """sentencepiece BPE pieces to CTC label ids and back.

    Ids are sentencepiece's own: its <unk> slot, id 0, is the CTC blank (encode refuses characters
    that have no piece, so sentencepiece never produces it). Every word starts with a piece that
    begins with '\u2581' ("\u2581the", or "\u2581" alone before a piece like "x"); no piece spans two words.
    There is no separator unit: the word boundary is part of the next word's first piece.

    The serialized sentencepiece model travels in `to_dict` (so in checkpoints) with the piece list;
    decoding needs only the pieces, encoding loads sentencepiece on first use.
    """

    def __init__(self, model_proto: bytes, symbols: Sequence[str] | None = None, source: str = "sentencepiece model"):
        self.model_proto = bytes(model_proto)
        self._processor = None
        if symbols is None:
            processor = _load_processor(self.model_proto, source)
            symbols = [BLANK] + [processor.id_to_piece(i) for i in range(1, processor.get_piece_size())]
            _check_model(processor, source)
            self._processor = processor
        self.symbols: list[str] = list(symbols)
        if not self.symbols or self.symbols[0] != BLANK:
            raise ValueError(f"{source}: the first symbol must be the blank {BLANK!r}")
        if len(set(self.symbols)) != len(self.symbols):
            raise ValueError(f"{source}: pieces must be unique")
        self.word_separator: int | None = None
        self.word_start_ids = frozenset(i for i, piece in enumerate(self.symbols) if i and piece.startswith(WORD_START))
        self.lexicon_tokens = self.symbols
        # Characters the pieces can spell; any other character would become sentencepiece's <unk>.
        self._chars = {" "} | {c for piece in self.symbols[1:] for c in piece.replace(WORD_START, " ")}

    def encode(self, text: str) -> list[int]:
        """Normalized text -> piece ids. Raises ValueError naming characters that no piece holds."""
        bad = self.unknown_chars(text)
        if bad:
            raise ValueError(f"characters outside the tokenizer's pieces: {''.join(sorted(bad))!r} in {text!r}")
        ids = self.processor().encode(text)
        if 0 in ids:  # sentencepiece's <unk>, which is our blank: a reused model may lack a character's own piece
            raise ValueError(f"the tokenizer's pieces cannot spell {text!r}")
        return ids

    def decode(self, ids: Iterable[int]) -> str:
        """Piece ids (blanks already removed) -> text with single spaces and no leading/trailing space."""
        text = "".join(self.symbols[i] for i in ids if i != 0).replace(WORD_START, " ")
        return _SPACES.sub(" ", text).strip()

    def spell(self, word: str) -> list[str]:
        """A word's spelling in `lexicon_tokens`: its pieces ('\u2581c at'); a word is complete
        after its last piece, since the next word's first piece starts with '\u2581'."""
        _check_word(word)
        return [self.symbols[i] for i in self.encode(word)]

    def processor(self):
        """The sentencepiece processor (loaded on first use)."""
        if self._processor is None:
            self._processor = _load_processor(self.model_proto, "the checkpoint's BPE model")
        return self._processor

    def to_dict(self) -> dict:
        return {"type": "bpe", "symbols": self.symbols, "model": self.model_proto}

    @classmethod
    def from_dict(cls, data: dict) -> "BPETokenizer":
        if data.get("type") != "bpe":
            raise ValueError(f"unknown tokenizer type {data.get('type')!r}")
        return cls(data["model"], data["symbols"])


def tokenizer_from_dict(data: dict) -> CharTokenizer | BPETokenizer:
    """The tokenizer a checkpoint holds (`to_dict` of either kind)."""
    kind = data.get("type") if isinstance(data, dict) else None
    if kind == "char":
        return CharTokenizer.from_dict(data)
    if kind == "bpe":
        return BPETokenizer.from_dict(data)
    raise ValueError(f"unknown tokenizer type {kind!r} (known: char, bpe)")


def build_tokenizer(config: TokenizerConfig, texts: Sequence[str]) -> CharTokenizer | BPETokenizer:
    """The tokenizer the `tokenizer` config section asks for; BPE pieces are trained on `texts`
    (the normalized training transcripts) unless tokenizer.model names an existing model."""
    if config.units == "char":
        return CharTokenizer()
    if config.units != "bpe":
        raise ValueError(f"tokenizer.units must be char or bpe, got {config.units!r}")
    if config.model:
        path = Path(config.model)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: sentencepiece model not found (tokenizer.model)")
        tokenizer = BPETokenizer(path.read_bytes(), source=f"{path} (tokenizer.model)")
        log.info("BPE units from %s: %d pieces with the blank", path, len(tokenizer))
        return tokenizer
    return train_bpe(texts, config.vocab_size)


def train_bpe(texts: Sequence[str], vocab_size: int) -> BPETokenizer:
    """A sentencepiece BPE model with at most `vocab_size` units (the blank included) trained on
    `texts`, always the same for the same texts: every sentence, in order, one thread. Its pieces
    cover every character of the texts and of the a-z ' alphabet."""
    spm = _import_sentencepiece()
    texts = [t for t in texts if t.strip()]
    if not texts:
        raise ValueError("no transcripts to train BPE units on")
    chars = (set("".join(texts)) - {" "}) | set(ALPHABET)
    minimum = len(chars) + 2  # blank, '\u2581', one piece per character
    if vocab_size < minimum:
        raise ValueError(f"tokenizer.vocab_size={vocab_size} is too small: the transcripts and the alphabet have "
                         f"{len(chars)} characters, so BPE units need at least {minimum} (with the blank and '\u2581')")
    proto = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(texts), model_writer=proto, model_type="bpe", vocab_size=vocab_size,
        hard_vocab_limit=False,  # a small corpus may allow fewer merges: fewer units, not an error
        character_coverage=1.0, required_chars=ALPHABET, byte_fallback=False,
        normalization_rule_name="identity",  # the text is normalized already; the pieces must spell it as is
        unk_id=0, bos_id=-1, eos_id=-1, pad_id=-1,  # id 0 becomes the blank; no other special pieces
        num_threads=1, input_sentence_size=0, shuffle_input_sentence=False,  # deterministic: all sentences, in order
        max_sentence_length=1 << 20, minloglevel=2,
    )
    tokenizer = BPETokenizer(proto.getvalue(), source="trained BPE model")
    if len(tokenizer) < vocab_size:
        log.info("BPE units: %d (with the blank) of tokenizer.vocab_size=%d; the transcripts allow no more merges",
                 len(tokenizer), vocab_size)
    else:
        log.info("BPE units: %d with the blank, trained on %d transcripts", len(tokenizer), len(texts))
    return tokenizer


def _check_word(word: str) -> None:
    if not word or " " in word:
        raise ValueError(f"cannot spell {word!r}: a word is non-empty and has no spaces")


def _import_sentencepiece():
    try:
        import sentencepiece
    except ImportError:
        raise RuntimeError(f"BPE units need sentencepiece: {BPE_EXTRA_HINT}") from None
    return sentencepiece


def _load_processor(model_proto: bytes, source: str):
    spm = _import_sentencepiece()
    try:
        return spm.SentencePieceProcessor(model_proto=model_proto)
    except Exception as e:  # sentencepiece raises RuntimeError or OSError for bad protos
        raise ValueError(f"{source}: not a sentencepiece model ({e})") from None


def _check_model(processor, source: str) -> None:
    """A sentencepiece model fits CTC units only with <unk> at id 0 (it becomes the blank), no other
    special pieces, and pieces that mark word starts with a leading '\u2581' and never span words."""
    hint = "train it with --unk_id=0 --bos_id=-1 --eos_id=-1 --pad_id=-1 (or leave tokenizer.model empty to train one)"
    if processor.unk_id() != 0:
        raise ValueError(f"{source}: <unk> must be id 0 (it becomes the CTC blank), it is {processor.unk_id()}; {hint}")
    for i in range(1, processor.get_piece_size()):
        piece = processor.id_to_piece(i)
        if processor.is_control(i) or processor.is_unknown(i) or processor.is_unused(i):
            raise ValueError(f"{source}: special piece {piece!r} at id {i}; {hint}")
        if WORD_START in piece[1:]:
            raise ValueError(f"{source}: piece {piece!r} spans a word boundary (split_by_whitespace must be on)")
    pieces = processor.encode("ab cd", out_type=str)
    if sum(piece.startswith(WORD_START) for piece in pieces) != 2:
        raise ValueError(f"{source}: words must start with a '\u2581' piece (add_dummy_prefix on, "
                         f"treat_whitespace_as_suffix off); 'ab cd' became {pieces}")

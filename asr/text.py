"""Text normalization and the character tokenizer.

The normalizer maps any transcript to the alphabet the models are trained on: lower-case a-z,
apostrophe and single spaces. The same function is applied to references before scoring, so a
reported WER never counts casing or punctuation.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Iterable

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


class CharTokenizer:
    """Characters to CTC label ids and back. Id 0 is the CTC blank; id 1 is the word separator (space).

    The symbol list is stored in checkpoints (`to_dict`), so a model always decodes with its own table.
    """

    def __init__(self, symbols: Iterable[str] | None = None):
        self.symbols: list[str] = list(symbols) if symbols is not None else [BLANK, " ", "'", *"abcdefghijklmnopqrstuvwxyz"]
        if self.symbols[0] != BLANK:
            raise ValueError(f"the first symbol must be the blank {BLANK!r}, got {self.symbols[0]!r}")
        if len(set(self.symbols)) != len(self.symbols):
            raise ValueError("tokenizer symbols must be unique")
        self._ids = {s: i for i, s in enumerate(self.symbols)}

    @property
    def blank(self) -> int:
        return 0

    def __len__(self) -> int:
        return len(self.symbols)

    def unknown_chars(self, text: str) -> set[str]:
        """Characters of `text` that have no label."""
        return {c for c in text if c not in self._ids}

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

    def to_dict(self) -> dict:
        return {"type": "char", "symbols": self.symbols}

    @classmethod
    def from_dict(cls, data: dict) -> "CharTokenizer":
        if data.get("type") != "char":
            raise ValueError(f"unknown tokenizer type {data.get('type')!r}")
        return cls(data["symbols"])

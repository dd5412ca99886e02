"""asr.corpora: the registry contract that `asr prepare` and `asr download` are built from.

The importers and downloads themselves are tested per corpus (test_prepare.py, test_prepare_corpora.py,
test_kaldi.py, test_download.py)."""

from __future__ import annotations

import argparse
import importlib
import pkgutil

import pytest

import asr.corpora
from asr.cli import build_parser
from asr.corpora import CORPORA, Corpus, download_corpus, downloadable, preparable


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    [action] = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(action.choices)


def test_every_corpus_module_registers_its_entries():
    shared = {"common", "download"}  # the machinery the corpus modules share
    modules = [m.name for m in pkgutil.iter_modules(asr.corpora.__path__) if m.name not in shared]
    assert modules  # one module per corpus
    registered = set(map(id, CORPORA.values()))
    for name in modules:
        module = importlib.import_module(f"asr.corpora.{name}")
        entries = [v for v in vars(module).values() if isinstance(v, Corpus)]
        assert entries, f"asr/corpora/{name}.py defines no Corpus entry"
        for entry in entries:
            assert id(entry) in registered, f"{entry.name} (asr/corpora/{name}.py) is not in CORPORA"


def test_entries_are_consistent():
    for name, corpus in CORPORA.items():
        assert corpus.name == name
        assert corpus.prepare is not None or corpus.download is not None, name
        assert (corpus.prepare is None) == (corpus.add_arguments is None), name
        if corpus.prepare is not None:
            assert corpus.help, f"{name}: asr prepare --help needs a line for it"


def test_the_command_line_is_built_from_the_registry():
    commands = _subcommands(build_parser())
    assert list(_subcommands(commands["prepare"])) == preparable()
    assert preparable() == ["librispeech", "fsdd", "an4", "commonvoice", "tedlium", "ljspeech", "speechocean762",
                            "kaldi", "folder"]
    assert set(downloadable()) == {"librispeech", "mini-librispeech", "librispeech-lm", "fsdd", "an4", "tedlium",
                                   "ljspeech", "commonvoice"}
    [corpus_arg] = [a for a in commands["download"]._actions if a.dest == "corpus"]
    assert list(corpus_arg.choices) == downloadable()
    for name, parser in _subcommands(commands["prepare"]).items():
        options = {o for a in parser._actions for o in a.option_strings}
        assert {"--out", "--strict"} <= options, name  # what _prepare reads of every corpus
        assert ("--max-duration" in options) == (name != "fsdd"), name


def test_download_of_an_unknown_corpus_names_the_known_ones(tmp_path):
    with pytest.raises(ValueError, match="unknown corpus 'kaldi'; choose one of librispeech, mini-librispeech"):
        download_corpus("kaldi", tmp_path)  # importable, but nothing to download
    with pytest.raises(ValueError, match="unknown corpus 'nope'"):
        download_corpus("nope", tmp_path)
    assert list(tmp_path.iterdir()) == []

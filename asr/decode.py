"""Turning CTC outputs into text: greedy best path, CTC prefix beam search, flashlight's lexicon and
KenLM search, torchaudio's CUDA search, all behind one `Decoder` interface; and the decode settings
(the checkpoint's, then decode.yaml, then explicit options).

Shapes: log-probs (B, T, V), lengths (B,). This module imports torch only inside the decoders that
need it, so the greedy decoder and the settings work without torch (asr.serving.onnx_runtime).
"""

from __future__ import annotations

import functools
import multiprocessing
import os
import signal
import sys
import threading
import weakref
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Protocol, Sequence

import numpy as np

from .text import Tokenizer

if TYPE_CHECKING:  # torch is imported where a decoder needs it: the ONNX runtime decodes without it
    import torch

    from .config import DecodeConfig


def greedy_ids(log_probs, blank: int = 0) -> list[int]:
    """Best path of one utterance: (T, V) log-probs (numpy, or a CPU tensor) -> label ids, the
    argmax per frame with repeats merged and blanks dropped."""
    return collapse(np.asarray(log_probs).argmax(axis=-1), blank)


def collapse(best: np.ndarray, blank: int = 0) -> list[int]:
    """CTC's many-to-one map on a (T,) label path: repeats merge, blanks drop. The one place it is done."""
    best = np.asarray(best)
    keep = (best != blank) & np.r_[True, best[1:] != best[:-1]]
    return best[keep].tolist()


def greedy_decode(log_probs: torch.Tensor, lengths: torch.Tensor, blank: int = 0) -> list[list[int]]:
    """Best path of a batch: (B, T, V) log-probs (any device), (B,) lengths -> label ids per utterance.
    The argmax runs where the log-probs are; only the (B, T) labels come to the CPU."""
    best = log_probs.argmax(dim=-1).cpu().numpy()
    return [collapse(best[i, : int(n)], blank) for i, n in enumerate(lengths.tolist())]


# ---------------------------------------------------------------------------------------------------
# Decoders: a decoder maps (B, T, V) log-probs and (B,) lengths to an n-best list of Hypothesis per
# utterance.

DECODERS = ("greedy", "beam", "beam-lm", "gpu-beam")
LM_EXTRA_HINT = "pip install 'asr[lm]' (flashlight-text)"


@dataclass
class Hypothesis:
    text: str
    score: float  # log-probability: of the best path (greedy), of the prefix (beam), or flashlight's total
    tokens: list[int] = field(default_factory=list)


class Decoder(Protocol):
    """What every decoder is: (B, T, V) log-probs (a numpy array or a tensor) and (B,) frame counts
    -> per utterance its hypotheses, best first (at least one)."""

    def __call__(self, log_probs: np.ndarray | torch.Tensor, lengths: np.ndarray | torch.Tensor) -> list[list[Hypothesis]]:
        ...


def _numpy(x) -> np.ndarray:
    """A numpy array of log-probs or lengths given as numpy or as a tensor on any device."""
    if not hasattr(x, "detach"):
        return np.asarray(x)
    return x.detach().float().cpu().numpy() if x.is_floating_point() else x.detach().cpu().numpy()


def _tensor(x) -> torch.Tensor:
    import torch

    return torch.as_tensor(x)


def ctc_prefix_beam_search(
    log_probs: torch.Tensor | np.ndarray,
    beam_size: int = 10,
    blank: int = 0,
    nbest: int = 1,
    token_min_logp: float = -12.0,
) -> list[tuple[list[int], float]]:
    """CTC prefix beam search over one utterance's (T, V) log-probs, without a language model.

    Each hypothesis is a label prefix with two log-probabilities: of all paths that produce it and
    end in blank, and of those that end in its last label. Per frame, all K prefixes are extended by
    all labels at once as a (K, V) array; extensions that reproduce a prefix already in the beam
    (the parent of a beam entry extended by that entry's last label) are merged into it; the best K
    of the K stays and K*V extensions form the next beam. Labels below `token_min_logp` in a frame
    are not tried as extensions. Prefixes are nodes of a trie, so comparing and extending them is O(1).

    With beam_size 1 the search keeps one path, the best one per frame: the greedy result.
    Returns up to `nbest` (label ids, log-probability), best first.
    """
    lp = np.asarray(_numpy(log_probs), np.float32)
    T, V = lp.shape
    if beam_size <= 1 or T == 0:
        best = lp.argmax(axis=1)
        return [(collapse(best, blank), float(lp[np.arange(T), best].sum()))]
    neg_inf = np.float32(-np.inf)
    # Trie of prefixes: node 0 is the empty prefix.
    node_parent: list[int] = [-1]
    node_label: list[int] = [-1]
    children: dict[tuple[int, int], int] = {}
    nodes = np.zeros(1, dtype=np.int64)  # beam entries' trie nodes
    p_b = np.zeros(1, dtype=np.float32)  # log P(prefix, path ends in blank)
    p_nb = np.full(1, neg_inf, dtype=np.float32)  # log P(prefix, path ends in its last label)
    last = np.full(1, -1, dtype=np.int64)  # last label of each prefix (-1: empty)
    parent_pos = np.full(1, -1, dtype=np.int64)  # beam position of each prefix's parent (-1: not in beam)
    for t in range(T):
        row = lp[t]
        total = np.logaddexp(p_b, p_nb)
        stay_b = total + row[blank]
        has_last = last >= 0
        stay_nb = np.where(has_last, p_nb + row[np.maximum(last, 0)], neg_inf)
        labels = np.nonzero(row >= token_min_logp)[0]
        labels = labels[labels != blank]
        ext = total[:, None] + row[labels][None, :]  # (K, L)
        if labels.size:
            # Repeating the last label only extends the prefix after a blank.
            same = last[:, None] == labels[None, :]
            if same.any():
                ext = np.where(same, (p_b + row[np.maximum(last, 0)])[:, None], ext)
            # Extensions that are already in the beam merge into that entry.
            merge = np.nonzero(parent_pos >= 0)[0]
            if merge.size:
                col = np.searchsorted(labels, last[merge])
                ok = (col < labels.size) & (labels[np.minimum(col, labels.size - 1)] == last[merge])
                merge, col = merge[ok], col[ok]
                stay_nb[merge] = np.logaddexp(stay_nb[merge], ext[parent_pos[merge], col])
                ext[parent_pos[merge], col] = neg_inf
        stay = np.logaddexp(stay_b, stay_nb)
        k = stay.size
        flat = ext.ravel()
        scores = np.concatenate([stay, flat])
        if scores.size > beam_size:
            chosen = np.argpartition(-scores, beam_size - 1)[:beam_size]
        else:
            chosen = np.arange(scores.size)
        chosen = chosen[np.isfinite(scores[chosen])]
        new_nodes = np.empty(chosen.size, dtype=np.int64)
        new_b = np.empty(chosen.size, dtype=np.float32)
        new_nb = np.empty(chosen.size, dtype=np.float32)
        new_last = np.empty(chosen.size, dtype=np.int64)
        for i, c in enumerate(chosen.tolist()):
            if c < k:
                new_nodes[i], new_b[i], new_nb[i], new_last[i] = nodes[c], stay_b[c], stay_nb[c], last[c]
            else:
                src, j = divmod(c - k, labels.size)
                label = int(labels[j])
                key = (int(nodes[src]), label)
                node = children.get(key)
                if node is None:
                    node = children[key] = len(node_parent)
                    node_parent.append(key[0])
                    node_label.append(label)
                new_nodes[i], new_b[i], new_nb[i], new_last[i] = node, neg_inf, flat[c - k], label
        position = {n: i for i, n in enumerate(new_nodes.tolist())}
        parent_pos = np.array([position.get(node_parent[n], -1) for n in new_nodes.tolist()], dtype=np.int64)
        nodes, p_b, p_nb, last = new_nodes, new_b, new_nb, new_last
    final = np.logaddexp(p_b, p_nb)
    results = []
    for i in np.argsort(-final)[: max(nbest, 1)].tolist():
        ids, n = [], int(nodes[i])
        while n > 0:
            ids.append(node_label[n])
            n = node_parent[n]
        results.append((ids[::-1], float(final[i])))
    return results


class GreedyDecoder:
    """Best path; its score is the path's log-probability."""

    def __init__(self, tokenizer: Tokenizer):
        self.tokenizer = tokenizer

    def __call__(self, log_probs, lengths) -> list[list[Hypothesis]]:
        log_probs, lengths = _numpy(log_probs), _numpy(lengths)
        out = []
        for i, n in enumerate(lengths.tolist()):
            frames = log_probs[i, : int(n)]
            ids = greedy_ids(frames, self.tokenizer.blank)
            out.append([Hypothesis(self.tokenizer.decode(ids), float(frames.max(axis=-1).sum()), ids)])
        return out


class PrefixBeamDecoder:
    """`ctc_prefix_beam_search` per utterance (no LM, no lexicon)."""

    def __init__(self, tokenizer: Tokenizer, beam_size: int = 10, nbest: int = 1):
        self.tokenizer, self.beam_size, self.nbest = tokenizer, beam_size, nbest

    def __call__(self, log_probs, lengths) -> list[list[Hypothesis]]:
        log_probs, lengths = _numpy(log_probs), _numpy(lengths)
        out = []
        for i in range(log_probs.shape[0]):
            found = ctc_prefix_beam_search(log_probs[i, : int(lengths[i])], self.beam_size, self.tokenizer.blank, self.nbest)
            out.append([Hypothesis(self.tokenizer.decode(ids), score, ids) for ids, score in found])
        return out


SILENCE_TOKEN = "<silence>"  # the extra token flashlight fills the frames between BPE words with


def _with_silence_column(log_probs: torch.Tensor, blank: int) -> torch.Tensor:
    import torch

    """(B, T, V) log-probs -> (B, T, V + 1) with a silence column: log(p_blank(t) + max over labels k
    of min(p_k(t - 1), p_k(t))), the probability that frame t is blank or still holds the label of
    frame t - 1. Which label a hypothesis ended its word with is not known to flashlight's column,
    so the label most likely held across the two frames stands in for it."""
    probs = log_probs.exp()
    held = torch.minimum(probs[:, 1:], probs[:, :-1])
    held[..., blank] = 0.0
    held = torch.cat([torch.zeros_like(probs[:, :1]), held], dim=1).amax(dim=-1)
    silence = torch.log(probs[..., blank] + held).clamp(min=-1e4)
    return torch.cat([log_probs, silence.unsqueeze(-1)], dim=-1)


class FlashlightDecoder:
    """torchaudio's ctc_decoder (flashlight-text): lexicon-constrained when a lexicon is given,
    lexicon-free otherwise (then an LM, if any, must be over our tokens, not words).

    The search is built and runs in a process of its own (a `SearchProcess`, forked when the decoder
    is made) wherever processes can be forked: building it (loading the LM, the lexicon trie of 200k
    words) takes longer than transcribing a short file, and in the process of its own it goes on
    while the model loads and runs. `asr transcribe` starts it before torch is even imported
    (start_search_early); a decoder made later with the same settings takes over that process.
    Errors in building it (a bad lexicon line) are raised by `ready()` or the first search.

    `workers` > 1 searches the utterances of a batch in that many processes at once. Flashlight's
    search holds the GIL (its Python binding does not release it), so threads would take turns; the
    search process forks them once the search is built, so they share the loaded LM and lexicon trie
    copy-on-write. Every utterance is searched the same way whichever process does it, so the
    hypotheses are those of `workers=1`. Where processes cannot be forked (Windows), the search is
    built and runs in this process.
    """

    def __init__(self, tokenizer: Tokenizer, lm: str = "", lexicon: str = "", beam_size: int = 50,
                 lm_weight: float = 2.0, word_score: float = 0.0, nbest: int = 1, beam_threshold: float = 25.0,
                 workers: int = 1):
        import torch

        self.tokenizer = tokenizer
        self.lexicon = bool(lexicon)
        tokens, options, self._silence_column = _flashlight_plan(tokenizer, lm, lexicon, beam_size, lm_weight,
                                                                  word_score, nbest, beam_threshold)
        self._closing_frame = None
        if tokenizer.word_separator is not None:
            self._closing_frame = torch.full((len(tokenizer),), -30.0)
            self._closing_frame[tokenizer.word_separator] = 0.0
        self._build = functools.partial(_build_flashlight_search, tokenizer, lm, lexicon, nbest, tokens, options)
        self._search: FlashlightSearch | None = None
        self._process: SearchProcess | None = None
        forkable = "fork" in multiprocessing.get_all_start_methods()
        self.workers = workers if workers > 1 and forkable else 1
        if forkable:
            key = _search_key(tokenizer, lm, lexicon, beam_size, lm_weight, word_score, nbest, beam_threshold)
            self._process = _STARTED_EARLY.pop(key, None) or SearchProcess(self._build)
            weakref.finalize(self, self._process.close)
        else:
            self._search = self._build()

    def ready(self) -> None:
        """Wait until the search is built; raises what building it raised (a bad lexicon line, an
        unreadable LM)."""
        if self._process is not None:
            self._process.wait_built()

    def close(self) -> None:
        """Stop the search process and its workers, if any (also done when the decoder is
        garbage-collected); a later search is built and runs in this process."""
        if self._process is not None:
            self._process.close()
            self._process, self.workers = None, 1

    def __call__(self, log_probs, lengths) -> list[list[Hypothesis]]:
        import torch

        log_probs, lengths = _tensor(_numpy(log_probs)), _tensor(_numpy(lengths)).to(torch.int64)
        if self._closing_frame is not None:
            # Our char models end an utterance without a word separator, but a lexicon spelling 'w o r d |'
            # completes a word only at '|': one extra frame that is surely '|' closes the last word.
            b, t, v = log_probs.shape
            log_probs = torch.cat([log_probs, torch.zeros(b, 1, v)], dim=1)
            log_probs[torch.arange(b), lengths] = self._closing_frame
            lengths = lengths + 1
        if self._silence_column:
            log_probs = _with_silence_column(log_probs, self.tokenizer.blank)
        emissions = log_probs.to(torch.float32).numpy()
        utterances = [np.ascontiguousarray(emissions[i, : int(n)]) for i, n in enumerate(lengths.tolist())]
        if self._process is not None:
            results = self._process.search(utterances, self.workers)
        else:
            if self._search is None:
                self._search = self._build()
            results = [self._search(frames) for frames in utterances]
        return [hyps or [Hypothesis("", float("-inf"), [])] for hyps in results]


def _flashlight_plan(tokenizer: Tokenizer, lm, lexicon: str, beam_size: int, lm_weight: float, word_score: float,
                     nbest: int, beam_threshold: float) -> tuple[list[str], dict, bool]:
    """What a FlashlightDecoder's search is built from, after the checks that need no building:
    (flashlight's token list, the options of its decoder, whether the emissions get a silence column).
    Imports no torch."""
    try:
        import flashlight.lib.text  # noqa: F401
    except ImportError as e:
        raise RuntimeError(f"--decoder beam-lm needs flashlight-text, which is not installed ({e}); "
                           f"install it with: {LM_EXTRA_HINT}") from None
    for name, path in (("LM", lm if isinstance(lm, str) else ""), ("lexicon", lexicon)):
        if path and not os.path.isfile(path):
            raise FileNotFoundError(f"{path}: {name} file not found")
    if not tokenizer.word_start_ids:
        raise ValueError("beam-lm needs units that mark words: a space symbol, or BPE pieces starting with '\u2581'")
    separator = tokenizer.word_separator
    if separator is None and lm and not lexicon:
        raise ValueError("beam-lm with a BPE model needs a --lexicon spelt in its pieces (asr lm lexicon WORDS "
                         "--model CKPT --out LEXICON): lexicon-free search with a word LM is not supported")
    tokens = list(tokenizer.lexicon_tokens)
    silence_column = False
    if separator is not None:
        silence = tokens[separator]
    elif lexicon:
        # BPE with a lexicon: a word is complete after its last piece (the next starts with '\u2581'),
        # and until the next word starts flashlight can only emit its silence token. A CTC model
        # often holds a piece for several frames, so silence gets a column of its own: blank, or
        # holding the piece of the frame before (see `_with_silence_column`).
        silence = SILENCE_TOKEN
        tokens.append(SILENCE_TOKEN)
        silence_column = True
    else:
        silence = tokens[tokenizer.blank]  # lexicon-free: silence is simply the blank
    options = dict(nbest=nbest, beam_size=beam_size, beam_threshold=beam_threshold, lm_weight=lm_weight,
                   word_score=word_score, blank_token=tokens[tokenizer.blank], sil_token=silence, unk_word="<unk>")
    return tokens, options, silence_column


def _build_flashlight_search(tokenizer: Tokenizer, lm, lexicon: str, nbest: int, tokens: list[str],
                             options: dict) -> FlashlightSearch:
    """The search of `_flashlight_plan`'s tokens and options: with a lexicon our lexicon_ctc_decoder
    (no torch), without one torchaudio's ctc_decoder."""
    if lexicon:
        decoder = lexicon_ctc_decoder(lexicon, tokens, lm or None, **options, units=tokenizer.lexicon_tokens)
    else:
        from torchaudio.models.decoder import ctc_decoder

        decoder = ctc_decoder(lexicon=None, tokens=tokens, lm=lm or None, **options)
    return FlashlightSearch(decoder, tokenizer, bool(lexicon), nbest)


class FlashlightSearch:
    """The part of a FlashlightDecoder that its search process runs: a flashlight decoder (with its
    word dictionary) and the conversion of its results to Hypothesis."""

    def __init__(self, ctc_decoder, tokenizer: Tokenizer, lexicon: bool, nbest: int):
        self.ctc_decoder, self.tokenizer, self.lexicon, self.nbest = ctc_decoder, tokenizer, lexicon, nbest

    def __call__(self, emissions: np.ndarray) -> list[Hypothesis]:
        """Flashlight's search of one utterance: (T, V') float32 emissions, V' = V plus the silence
        column where there is one -> its n-best hypotheses, as torchaudio's ctc_decoder returns them."""
        frames, labels = emissions.shape
        results = self.ctc_decoder.decoder.decode(emissions.ctypes.data, frames, labels)[: self.nbest]
        out = []
        for result in results:
            ids = [x for x in collapse(np.asarray(result.tokens, dtype=np.int64), self.tokenizer.blank)
                   if x < len(self.tokenizer)]
            words = [self.ctc_decoder.word_dict.get_entry(x) for x in result.words if x >= 0]
            text = " ".join(words) if self.lexicon else self.tokenizer.decode(ids)
            out.append(Hypothesis(text, float(result.score), ids))
        return out


class SearchProcess:
    """A FlashlightSearch built by `build` in a process forked from this one, searching there: the
    process builds it at once, says when it is built (or what building raised), then searches the
    batches it is sent, in `workers` processes of its own where a batch has several utterances.
    It stops when told to (`close`), or when this process ends and the pipe to it closes."""

    def __init__(self, build: Callable[[], FlashlightSearch]):
        context = multiprocessing.get_context("fork")
        self._connection, theirs = context.Pipe()
        self._process = context.Process(target=_run_search_process, args=(build, theirs, self._connection),
                                        name="asr-beam-lm", daemon=True)
        self._process.start()
        theirs.close()
        self._built = False
        self._error: Exception | None = None  # what building it raised: raised again by every later call
        self._lock = threading.Lock()  # one request at a time on the pipe, whichever thread asks

    def wait_built(self) -> None:
        with self._lock:
            self._wait_built()

    def search(self, utterances: list[np.ndarray], workers: int = 1) -> list[list[Hypothesis]]:
        """Each utterance's (T, V') float32 emissions -> its n-best hypotheses, in input order."""
        with self._lock:
            self._wait_built()
            self._connection.send((utterances, workers))
            return self._receive()

    def close(self) -> None:
        with self._lock:
            if self._process is None:
                return
            self._connection.close()  # the process sees the pipe closed, stops its workers and exits
            self._process.join(timeout=10)
            if self._process.exitcode is None:
                self._process.kill()
                self._process.join()
            self._process = None

    def _wait_built(self) -> None:
        if self._error is not None:
            raise self._error
        if not self._built:
            try:
                self._receive()
            except Exception as e:
                self._error = e
                raise
            self._built = True

    def _receive(self):
        if self._process is None:
            raise RuntimeError("beam-lm: the search process was closed")
        try:
            kind, value = self._connection.recv()
        except (EOFError, OSError):
            self._process.join(timeout=1)
            raise RuntimeError(f"beam-lm: the search process stopped (exit code {self._process.exitcode})") from None
        if kind == "error":
            raise value
        return value


_SEARCH: FlashlightSearch | None = None  # in a search process: its search, inherited by the workers it forks


def _run_search_process(build: Callable[[], FlashlightSearch], connection, parents_end) -> None:
    """The body of a SearchProcess (see there)."""
    global _SEARCH
    parents_end.close()  # else the pipe would never read as closed when the parent is gone
    # Daemonic, so that no parent ever waits for it at exit; multiprocessing refuses children to a
    # daemonic process, but this one's workers are stopped by itself (finally below).
    multiprocessing.current_process().daemon = False
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # stop the workers too (finally below)
    # Ctrl-C reaches the whole process group: the parent handles it (and closes this process); here it
    # would only print a traceback of this process and of each worker (which inherit this).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        _SEARCH = build()
    except Exception as e:
        connection.send(("error", _picklable(e)))
        return
    connection.send(("built", None))
    pool, pool_size = None, 1
    try:
        while True:
            try:
                utterances, workers = connection.recv()
            except EOFError:
                return
            try:
                if workers > 1 and len(utterances) > 1:
                    if pool_size != workers:
                        if pool is not None:
                            pool.terminate()
                        pool, pool_size = multiprocessing.get_context("fork").Pool(workers), workers
                    # Longest first, one utterance per task: the workers finish together.
                    order = sorted(range(len(utterances)), key=lambda i: -utterances[i].shape[0])
                    found = pool.map(_search_in_worker, [utterances[i] for i in order], chunksize=1)
                    results: list = [None] * len(utterances)
                    for i, hyps in zip(order, found):
                        results[i] = hyps
                else:
                    results = [_SEARCH(frames) for frames in utterances]
                connection.send(("done", results))
            except Exception as e:
                connection.send(("error", _picklable(e)))
    finally:
        if pool is not None:
            pool.terminate()
            pool.join()


def _search_in_worker(emissions: np.ndarray) -> list[Hypothesis]:
    """In a worker of a search process: the search of one utterance by the search it inherited."""
    return _SEARCH(emissions)


def _picklable(error: Exception) -> Exception:
    """`error` as it can cross to another process: as it is where it pickles, else a RuntimeError with its message."""
    import pickle

    try:
        pickle.loads(pickle.dumps(error))
        return error
    except Exception:
        return RuntimeError(f"{type(error).__name__}: {error}")


def _search_key(tokenizer: Tokenizer, lm, lexicon: str, beam_size: int, lm_weight: float, word_score: float,
                nbest: int, beam_threshold: float) -> tuple | None:
    """What makes two FlashlightDecoders' searches the same (None where the LM is a loaded object)."""
    if not isinstance(lm, str):
        return None
    return (repr(tokenizer.to_dict()), lm, lexicon, beam_size, float(lm_weight),
            float(word_score), nbest, float(beam_threshold))


_STARTED_EARLY: dict[tuple, SearchProcess] = {}  # by _search_key: searches start_search_early began


def close_early_searches() -> None:
    """Stop the searches start_search_early began that no decoder took over (the settings it read
    were not those the decoder was made with)."""
    while _STARTED_EARLY:
        _STARTED_EARLY.popitem()[1].close()


def start_search_early(model_path: str | os.PathLike, decode_file: str | os.PathLike | None = None, nbest: int = 1,
                       **given) -> bool:
    """Begin building the beam-lm search that the checkpoint's decode settings (decode_settings:
    its config < decode.yaml or `decode_file` < `given`) ask for, in a process of its own, before
    the caller imports torch or loads the model: the FlashlightDecoder later made with the same
    settings takes it over, so the LM and the lexicon trie are built while torch is imported and the
    model loads and runs (issue 27: a short file's transcript in about half the time). The
    checkpoint's config and tokenizer are read without torch (asr.files.checkpoint_entries).
    Returns whether a search was started: not for another decoder, nor where anything is amiss (the
    model's loading and the decoder then say what, as without this), nor where processes cannot be
    forked or flashlight-text is missing."""
    if "fork" not in multiprocessing.get_all_start_methods() or not flashlight_available():
        return False
    try:
        from .config import config_from_dict
        from .files import checkpoint_entries
        from .text import tokenizer_from_dict

        entries = checkpoint_entries(model_path)
        tokenizer = tokenizer_from_dict(entries["tokenizer"])
        settings = decode_settings(config_from_dict(entries["config"]).decode, model_path, decode_file, **given)
        if settings.decoder != "beam-lm":
            return False
        args = (tokenizer, settings.lm, settings.lexicon, settings.beam_size, settings.lm_weight, settings.word_score,
                nbest, settings.beam_threshold)
        tokens, options, _ = _flashlight_plan(*args)
    except Exception:
        return False
    key = _search_key(*args)
    if key not in _STARTED_EARLY:
        _STARTED_EARLY[key] = SearchProcess(functools.partial(_build_flashlight_search, tokenizer, settings.lm,
                                                              settings.lexicon, nbest, tokens, options))
    return True


def read_lexicon(path: str | os.PathLike, units: Sequence[str] | None = None) -> tuple[list[str], list[list[str]]]:
    """A flashlight lexicon ('word<TAB>t o k e n s' per line) -> (words, their spellings), in file
    order; a word with several spellings appears once per spelling. `units`: the model's own; a
    spelling using any other is a ValueError naming its line (a character lexicon does not fit a BPE
    model, nor one BPE model's lexicon another's)."""
    words, spellings = [], []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            word, *spelling = line.split() or [""]
            if not word:
                continue
            if not spelling:
                raise ValueError(f"{path}, line {number}: no spelling after the word {word!r}")
            words.append(word)
            spellings.append(spelling)
    if units is not None and set().union(*spellings) - set(units):  # one set operation, not a check per letter
        known = set(units)
        with open(path, encoding="utf-8") as f:  # only to name the first bad line
            for number, line in enumerate(f, 1):
                word, *spelling = line.split() or [""]
                token = next((t for t in spelling if t not in known), None)
                if token is not None:
                    raise ValueError(f"{path}, line {number}: the spelling of {word!r} uses {token!r}, which is not a "
                                     "unit of this model; write its lexicon with: asr lm lexicon WORDS --model CKPT --out LEXICON")
    return words, spellings


def lexicon_word_dict(words: Sequence[str], unk_word: str):
    """flashlight's word Dictionary of a lexicon's words: each once, in file order, then `unk_word`
    (the index of any other word). lexicon_ctc_decoder and load_flashlight_lm both number words so."""
    from flashlight.lib.text.dictionary import Dictionary

    distinct = list(dict.fromkeys(words))
    word_dict = Dictionary(distinct + ([unk_word] if unk_word not in distinct else []))
    word_dict.set_default_index(word_dict.get_index(unk_word))
    return word_dict


@dataclass
class LexiconSearch:
    """What lexicon_ctc_decoder makes: flashlight's LexiconDecoder with its word Dictionary, and the
    LM, which flashlight keeps no reference to (pytorch/audio#3218) so this does. `decoder.decode(
    emissions pointer, frames, labels)` searches; FlashlightSearch reads `decoder` and `word_dict`, as
    it does of torchaudio's CTCDecoder (lexicon-free search)."""
    decoder: Any
    word_dict: Any
    lm: Any


def lexicon_ctc_decoder(lexicon: str, tokens: Sequence[str], lm, nbest: int, beam_size: int, beam_threshold: float,
                        lm_weight: float, word_score: float, blank_token: str, sil_token: str, unk_word: str,
                        units: Sequence[str] | None = None) -> LexiconSearch:
    """The search torchaudio's ctc_decoder(lexicon=...) builds, built about 6 times faster and without
    torch: torchaudio reads the lexicon through flashlight's load_words (a C++ map of 200k words
    converted to Python and back) and looks each letter up in C++ from Python; that cost ~3 s of
    every start with the shipped 200k-word lexicon, more than the search of a short file (issue 27).
    Here the lexicon is read in Python, words and letters are mapped by Python dicts, and the same
    flashlight objects are made with the same options (torchaudio's defaults: unk_score -inf,
    sil_score 0, no log-add, every token per step), so the search is the same; tests/test_beam.py
    compares the two. `lm`: a path, None, or a KenLM from load_flashlight_lm over the same lexicon.
    `units`: the model's own units, which every spelling must use (read_lexicon); `tokens` may hold
    more (a BPE model's extra silence token). `nbest` is the caller's to apply to the results."""
    from flashlight.lib.text.decoder import (CriterionType, LexiconDecoder, LexiconDecoderOptions, SmearingMode,
                                             Trie, ZeroLM)
    from flashlight.lib.text.decoder.kenlm import KenLM

    words, spellings = read_lexicon(lexicon, units)
    token_ids = {token: i for i, token in enumerate(tokens)}
    word_dict = lexicon_word_dict(words, unk_word)
    if isinstance(lm, str):
        lm = KenLM(lm, word_dict)
    elif lm is None:
        lm = ZeroLM()
    silence, blank = token_ids[sil_token], token_ids[blank_token]
    trie = Trie(len(tokens), silence)
    start = lm.start(False)
    word_ids = {w: i for i, w in enumerate(dict.fromkeys(words))}
    unigram = {}
    for word, spelling in zip(words, spellings):
        index = word_ids[word]
        if index not in unigram:
            unigram[index] = lm.score(start, index)[1]
        trie.insert([token_ids[t] for t in spelling], index, unigram[index])
    trie.smear(SmearingMode.MAX)
    options = LexiconDecoderOptions(
        beam_size=beam_size, beam_size_token=len(tokens), beam_threshold=beam_threshold, lm_weight=lm_weight,
        word_score=word_score, unk_score=float("-inf"), sil_score=0.0, log_add=False, criterion_type=CriterionType.CTC)
    decoder = LexiconDecoder(options, trie, lm, silence, blank, word_dict.get_index(unk_word), [], False)
    return LexiconSearch(decoder, word_dict, lm)


# The first compute capability on which torchaudio's cuda_ctc_decoder is known to abort (see CudaBeamDecoder).
HOPPER = (9, 0)


class CudaBeamDecoder:
    """torchaudio's cuda_ctc_decoder: prefix beam search on the GPU, no LM."""

    def __init__(self, tokenizer: Tokenizer, device: torch.device, beam_size: int = 10, nbest: int = 1,
                 blank_skip_threshold: float = 0.95):
        import torch

        if torch.device(device).type != "cuda" or not torch.cuda.is_available():
            raise RuntimeError(f"--decoder gpu-beam needs a CUDA device (got device {str(device)!r}"
                               f"{'' if torch.cuda.is_available() else ', and CUDA is not available here'}); "
                               "on a CPU use --decoder beam or beam-lm")
        if tokenizer.blank != 0:
            raise ValueError("gpu-beam needs the blank at label 0")
        capability = torch.cuda.get_device_capability(device)
        if capability >= HOPPER:
            # Its top-k kernel writes past its shared memory (pytorch/audio#3754): on compute capability
            # 9.0+ the process aborts at the first decode (seen on an H200, torchaudio 2.11), so refuse first.
            raise RuntimeError(f"--decoder gpu-beam: torchaudio's CUDA beam search crashes the process on this "
                               f"GPU (compute capability {capability[0]}.{capability[1]}; pytorch/audio#3754); "
                               "use --decoder greedy on the GPU, or beam / beam-lm (they run on the CPU)")
        from torchaudio.models.decoder import cuda_ctc_decoder

        self.tokenizer, self.device = tokenizer, torch.device(device)
        self.decoder = cuda_ctc_decoder(tokenizer.lexicon_tokens, nbest=nbest, beam_size=beam_size,
                                        blank_skip_threshold=blank_skip_threshold)

    def __call__(self, log_probs, lengths) -> list[list[Hypothesis]]:
        import torch

        log_probs = _tensor(log_probs).to(self.device, torch.float32).contiguous()
        results = self.decoder(log_probs, _tensor(lengths).to(self.device, torch.int32))
        return [[Hypothesis(self.tokenizer.decode(h.tokens), float(h.score), list(h.tokens)) for h in hyps] for hyps in results]


def make_decoder(name: str, tokenizer: Tokenizer, device: torch.device | str = "cpu", beam_size: int = 10,
                 lm: str = "", lexicon: str = "", lm_weight: float = 2.0, word_score: float = 0.0,
                 nbest: int = 1, beam_threshold: float = 25.0, workers: int = 1) -> Decoder:
    """The decoder of DECODERS called `name`; `workers`: processes of beam-lm (FlashlightDecoder)."""
    if name == "greedy":
        return GreedyDecoder(tokenizer)
    if name == "beam":
        return PrefixBeamDecoder(tokenizer, beam_size, nbest)
    if name == "beam-lm":
        return FlashlightDecoder(tokenizer, lm, lexicon, beam_size, lm_weight, word_score, nbest, beam_threshold, workers)
    if name == "gpu-beam":
        return CudaBeamDecoder(tokenizer, device, beam_size, nbest)
    raise ValueError(f"unknown decoder {name!r} (choose from {', '.join(DECODERS)})")


def decode_settings(config_decode: DecodeConfig, model_path: str | os.PathLike | None = None,
                    decode_file: str | os.PathLike | None = None, **given) -> DecodeConfig:
    """The decode section to use, in the one order of precedence of every caller (the CLI, the API,
    the server): the checkpoint's config, then `decode_file`, or without one `decode.yaml` next to
    the checkpoint when present (written by scripts/tune_decoder.py; a mapping, optionally under a
    `decode:` key), then the options given explicitly (None: not given), batch_seconds and
    chunk_seconds/chunk_overlap included. Relative LM and lexicon paths in a decode file are relative to that file. beam-lm from a
    file (not given) falls back to greedy, with one line on stderr, where flashlight-text is missing.
    Returns a new DecodeConfig."""
    import copy

    import yaml

    from .config import ConfigError, set_option

    settings = copy.deepcopy(config_decode)
    if decode_file is not None and not os.path.isfile(decode_file):
        raise ConfigError(f"{decode_file}: decode config not found")
    if decode_file is not None or model_path is not None:
        path = decode_file or os.path.join(os.path.dirname(os.path.abspath(model_path)), "decode.yaml")
        if os.path.isfile(path):
            with open(path, encoding="utf-8") as f:
                data = yaml.safe_load(f) or {}
            data = data.get("decode", data) if isinstance(data, dict) else data
            if not isinstance(data, dict):
                raise ConfigError(f"{path}: must be a mapping of decode options")
            for key, value in data.items():
                if key in ("lm", "lexicon") and isinstance(value, str) and value and not os.path.isabs(value):
                    value = os.path.join(os.path.dirname(os.path.abspath(path)), value)  # beside the file
                set_option(settings, "decode", key, value, path)
    for key, value in given.items():
        if value is not None:
            set_option(settings, "decode", key, value, "command line")
    if settings.decoder not in DECODERS:
        raise ValueError(f"unknown decoder {settings.decoder!r} (choose from {', '.join(DECODERS)})")
    if settings.decoder == "beam-lm" and given.get("decoder") is None and not flashlight_available():
        # beam-lm chosen by a config file, not by the user: the model still works without the LM extra.
        print(f"asr: flashlight-text is not installed, so decoding greedily without the LM "
              f"(for beam search with the LM: {LM_EXTRA_HINT})", file=sys.stderr)
        settings.decoder = "greedy"
    return settings


def flashlight_available() -> bool:
    """Whether beam-lm can run here (the `lm` extra, flashlight-text, is installed)."""
    import importlib.util

    try:
        return importlib.util.find_spec("flashlight.lib.text") is not None
    except ImportError:  # no `flashlight` package at all
        return False


def decoder_from_settings(settings: DecodeConfig, tokenizer: Tokenizer, device: torch.device | str = "cpu",
                          nbest: int = 1) -> Decoder:
    """The decoder the settings describe; beam-lm's worker processes: `settings.workers`, or with 0 as
    many as torch's CPU threads (what `--threads` sets), so one thread count governs both."""
    return make_decoder(settings.decoder, tokenizer, device, settings.beam_size, settings.lm, settings.lexicon,
                        settings.lm_weight, settings.word_score, nbest, settings.beam_threshold,
                        settings.workers or default_workers())


def default_workers() -> int:
    """Decoder processes when none are set: torch's CPU thread count (1 without torch)."""
    try:
        import torch
    except ImportError:
        return 1
    return torch.get_num_threads()


def load_flashlight_lm(lm: str, lexicon: str = ""):
    """A KenLM model loaded once for several FlashlightDecoders (tuning LM weights loads a large ARPA
    only once), over the word list lexicon_ctc_decoder makes of the same lexicon (the LM maps the
    decoder's word indices through it, so both must number the words alike); where flashlight's
    KenLM is missing, returns the path (each decoder then loads the file itself)."""
    if not lm or not lexicon:
        return lm
    try:
        from flashlight.lib.text.decoder.kenlm import KenLM
    except ImportError:
        return lm
    return KenLM(lm, lexicon_word_dict(read_lexicon(lexicon)[0], "<unk>"))

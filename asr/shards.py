"""Transcribing a collection in shares, resumably: the part of `asr transcribe` and `asr decode`
that decides who decodes what, keeps what is finished, and merges it into the one output.

A plain run is one rank of one; under `torchrun --nproc-per-node N [--nnodes M ...]` each of the
WORLD_SIZE ranks (torchrun's environment, read by asr.training.distributed) runs the same steps:

1. Rank 0 reads which inputs an earlier run finished (`read_records`) and sends the list of the
   others to every rank; they are split among the ranks by their audio duration
   (`shard_by_duration`), which every rank computes alike.
2. Each rank decodes its share with the usual Pipeline and appends one JSON line per input to its
   own part file in the output's parts folder (`PartWriter`), flushed after every model batch, so a
   rank killed mid-run loses at most the batch in hand. A finished part is renamed from
   `rankR-of-N.RUN.jsonl.partial` to `rankR-of-N.RUN.jsonl`.
3. Rank 0 waits for the others (a barrier of a gloo process group), reads every part and writes
   the single output a one-process run writes, in input order (`merge`), atomically, and the
   rejects file: one {"path", "reason"} JSON line per input that failed.

A rerun with the same inputs and output reads the records of all parts in the folder, whichever
rank and however many ranks wrote them, and decodes only the rest; inputs that failed are tried
again. The parts folder holds the settings of the run that wrote it (`claim_folder`): a rerun with
another model (or the same file rewritten) or decoder discards the old records rather than mixing
them into its output, and says so. The parts folder
must be on a file system that every node sees (NFS, Lustre, ...), like the output itself.

Test hook: ASR_TEST_KILL_RANK_AFTER="R:K" makes rank R kill itself with SIGKILL after it has
flushed K records (tests/test_shards.py uses it to stop one rank mid-run at a known point).
"""

from __future__ import annotations

import json
import os
import signal
import time
import uuid
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable, Iterator, Sequence

from .files import write_text_atomic

if TYPE_CHECKING:
    from .training.distributed import DistributedSetup
    from .transcribe import Transcript

KILL_ENV = "ASR_TEST_KILL_RANK_AFTER"
SETTINGS_FILE = "settings.json"
# How long rank 0 waits at the barrier for the slowest rank: a share of an archive can take hours.
# A rank that dies ends the run sooner: torchrun stops the others when one fails.
DECODE_GROUP_TIMEOUT = timedelta(hours=48)

# Decodes the inputs at the given positions, handing each batch of finished (position, Transcript)
# pairs to the callback as soon as they are final.
DecodeShare = Callable[[list[int], Callable[[list[tuple[int, "Transcript"]]], None]], None]


def shard_by_duration(durations: Sequence[float], world: int) -> list[list[int]]:
    """Indices of `durations` split into `world` shares of similar total duration: longest first
    onto the share with the least audio so far (ties: the lower rank), equal durations in index
    order. Each share is in ascending index order. Deterministic: every rank computes the same."""
    if world < 1:
        raise ValueError(f"cannot split inputs among {world} ranks")
    shares: list[list[int]] = [[] for _ in range(world)]
    loads = [0.0] * world
    for i in sorted(range(len(durations)), key=lambda i: (-durations[i], i)):
        lightest = min(range(world), key=lambda r: (loads[r], r))
        shares[lightest].append(i)
        loads[lightest] += durations[i]
    return [sorted(share) for share in shares]


def consecutive_groups(positions: Sequence[int], durations: Sequence[float], max_seconds: float) -> list[list[int]]:
    """`positions` in order, cut into consecutive groups of at most `max_seconds` of audio (`durations`
    of each; a longer input makes a group alone)."""
    groups: list[list[int]] = []
    total = max_seconds
    for position, seconds in zip(positions, durations):
        if total + seconds > max_seconds:
            groups.append([])
            total = 0.0
        groups[-1].append(position)
        total += seconds
    return groups


def parts_folder(output: str | os.PathLike, is_folder: bool = False) -> Path:
    """Where the records of the run writing `output` go, beside it: hyp.txt -> hyp.txt.parts/; the
    folder of per-file outputs (`is_folder`) subs/ -> subs.parts/ (the folder holds only outputs)."""
    output = Path(os.path.abspath(output)) if is_folder else Path(output)
    return output.with_name(output.name + ".parts")


def rejects_path(output: str | os.PathLike, is_folder: bool = False) -> Path:
    """The rejects file of `output`, beside it: hyp.txt -> hyp.rejects.jsonl; a folder subs/ ->
    subs.rejects.jsonl."""
    output = Path(os.path.abspath(output)) if is_folder else Path(output)
    return output.with_name((output.name if is_folder else output.stem) + ".rejects.jsonl")


def make_record(key: str, output: str, result: Transcript) -> dict:
    """One input's line in a part: its key (path or utterance id), what the merged output holds for
    it, and what the summary and the rejects file need."""
    return {"key": key, "path": result.path, "output": output, "duration": result.duration, "error": result.error,
            "warning": result.warning}


def _parts(folder: Path) -> list[Path]:
    """The parts in `folder`, finished or not, oldest run first (by the time in their names)."""
    if not folder.is_dir():
        return []
    return sorted(folder.glob("rank*.jsonl*"), key=lambda part: (part.name.split(".")[1], part.name))


def _part_records(folder: Path) -> Iterator[dict]:
    """Every record of every part of `folder`, oldest run first. A last line cut short by a kill is
    skipped; any other line that is not a record is a ValueError naming the part and line."""
    for part in _parts(folder):
        lines = part.read_text(encoding="utf-8").split("\n")
        for number, line in enumerate(lines, 1):
            if not line:
                continue
            try:
                record = json.loads(line)
                record["key"]
            except (json.JSONDecodeError, KeyError, TypeError):
                if number == len(lines):  # no newline after it: the write was cut off
                    continue
                raise ValueError(f"{part}, line {number}: not a record of asr.shards; delete {folder} to start over") from None
            yield record


def read_records(folder: Path) -> dict[str, dict]:
    """The record of each key in the parts of `folder`: a success wins over an error, a later run's
    over an earlier one's of the same kind."""
    records: dict[str, dict] = {}
    for record in _part_records(folder):
        if not record.get("error") or records.get(record["key"], {}).get("error", "x"):
            records[record["key"]] = record
    return records


def count_records(folder: Path) -> dict[str, int]:
    """How many records of the parts in `folder` hold each key: 1 per key when nothing was decoded twice."""
    counts: dict[str, int] = {}
    for record in _part_records(folder):
        counts[record["key"]] = counts.get(record["key"], 0) + 1
    return counts


def claim_folder(folder: Path, settings: dict) -> str:
    """Make `folder` the parts folder of a run with `settings` (model, decoder, output format): kept
    as it is when it holds the records of a run with the same settings; emptied when another model
    or decoder made them (they no longer describe the output asked for). Returns '' or a sentence
    saying what was discarded and why. Rank 0 alone calls it, before any rank writes."""
    path = folder / SETTINGS_FILE
    settings = json.loads(json.dumps(settings))  # as it reads back: lists for tuples, str keys
    note = ""
    if path.is_file():
        stored = json.loads(path.read_text(encoding="utf-8"))
        differ = sorted(k for k in set(stored) | set(settings) if stored.get(k) != settings.get(k))
        if not differ:
            return ""
        old = _parts(folder)
        for part in old:
            part.unlink()
        details = ", ".join(f"{k}: {stored.get(k)!r} then, {settings.get(k)!r} now" for k in differ)
        note = f"{folder}: discarded {len(old)} parts of a run with other settings ({details}); starting over"
    write_text_atomic(path, json.dumps(settings, indent=1, sort_keys=True) + "\n")
    return note


class PartWriter:
    """One rank's part: records appended and flushed batch by batch to `rankR-of-N.RUN.jsonl.partial`
    (made at the first record), renamed to `rankR-of-N.RUN.jsonl` when the share is done. Without a
    folder, records are kept in `records` instead (a run that writes to stdout)."""

    def __init__(self, folder: Path | None, rank: int, world: int):
        self.records: list[dict] = []
        self.count = 0
        self.path = None if folder is None else \
            folder / f"rank{rank}-of-{world}.{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:8]}.jsonl"
        self._file = None
        rank_and_count = os.environ.get(KILL_ENV, "")
        self._kill_after = int(rank_and_count.split(":")[1]) if rank_and_count.startswith(f"{rank}:") else None

    def write(self, records: Iterable[dict]) -> None:
        records = list(records)
        self.count += len(records)
        if self.path is None:
            self.records += records
        elif records:
            if self._file is None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._file = open(self.path.with_name(self.path.name + ".partial"), "a", encoding="utf-8")
            self._file.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
            self._file.flush()  # in the kernel's hands: a killed process loses nothing written so far
        if self._kill_after is not None and self.count >= self._kill_after:
            os.kill(os.getpid(), signal.SIGKILL)

    def finish(self) -> None:
        """The share is done: the part gets its final name."""
        if self._file is not None:
            self._file.close()
            os.replace(self._file.name, self.path)


def merge(keys: Sequence[str], records: dict[str, dict]) -> tuple[str, list[dict]]:
    """(the output: each key's record output in the order of `keys`, the rejects: {"path", "reason"}
    of each key whose record holds an error, with its "id" when the key is not the path: an
    utterance id). A key without a record is a ValueError listing them."""
    missing = [k for k in dict.fromkeys(keys) if k not in records]
    if missing:
        raise ValueError(f"no result for {len(missing)} inputs ({', '.join(missing[:5])}{', ...' if len(missing) > 5 else ''}): "
                         "a rank stopped before its share was done, or the output folder is not shared by all nodes; "
                         "run the command again to decode them")
    rejects = []
    for key in dict.fromkeys(keys):
        record = records[key]
        if record.get("error"):
            path = record.get("path") or key
            rejects.append({"path": path, "reason": record["error"], **({"id": key} if key != path else {})})
    return "".join(records[k]["output"] for k in keys), rejects


def write_rejects(path: Path, rejects: list[dict]) -> None:
    """The rejects file, JSON Lines {"path", "reason"} (written, possibly empty, on every run)."""
    write_text_atomic(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rejects))


@dataclass
class ShardSummary:
    """What a sharded run did, over all ranks (on rank 0; other ranks get only their own counts)."""

    inputs: int = 0  # distinct inputs
    done_before: int = 0  # finished by an earlier run, skipped
    done_now: int = 0  # decoded by this run (including those that failed)
    failed: int = 0  # inputs whose result is an error, earlier or now
    audio_seconds_now: float = 0.0  # audio decoded by this run
    wall_seconds: float = 0.0  # from the split to the merged output
    ranks: int = 1
    output: str = ""  # the merged output (rank 0)
    rejects: list[dict] = field(default_factory=list)
    is_main: bool = True
    note: str = ""  # what happened to the records of an earlier run with other settings, if anything

    @property
    def rtfx(self) -> float:
        return self.audio_seconds_now / max(self.wall_seconds, 1e-9)

    def describe(self, what: str = "files") -> str:
        """One line: files, audio hours, wall time, RTFx, done earlier and now, failures."""
        return (f"{self.inputs} {what}: {self.done_before} done earlier, {self.done_now} now "
                f"({self.audio_seconds_now / 3600:.2f} h of audio in {self.wall_seconds:.1f} s on {self.ranks} "
                f"rank{'s' if self.ranks > 1 else ''}: RTFx {self.rtfx:.1f}); {self.failed} failed")


def run_sharded(keys: Sequence[str], duration_of: Callable[[int], float], decode: DecodeShare,
                output_of: Callable[[int, Transcript], str], folder: Path | None, settings: dict,
                setup: DistributedSetup) -> ShardSummary:
    """Decode the inputs named by `keys` with the ranks of `setup`, skipping those with a successful
    record in `folder`, and merge (rank 0). `duration_of(position)`: the input's seconds of audio (0
    when unknown), asked only with several ranks, for the inputs still to do, each once on one rank.
    `decode(positions, done)` decodes the inputs at those positions of `keys`, calling `done` with
    finished (position, Transcript) pairs; `output_of(position, transcript)` is the input's text in
    the merged output (called on the rank that decoded it, as soon as it is final: it may also write
    a per-file output). `folder` None: nothing kept on disk, nothing resumed; the ranks' records
    are sent to rank 0 when all are done."""
    from .training.distributed import process_group

    # gloo whatever device decodes: only barriers and small messages pass between the ranks.
    with process_group(setup, "cpu", timeout=DECODE_GROUP_TIMEOUT):
        start = time.perf_counter()
        unique = list(dict.fromkeys(keys))
        todo: list[int] = []
        summary_note = ""
        if setup.is_main:  # rank 0 alone reads what is done, before any rank writes: one list for all
            if folder is not None:
                summary_note = claim_folder(folder, settings)
            earlier = read_records(folder) if folder is not None else {}
            first = {k: i for i, k in reversed(list(enumerate(keys)))}  # the first position of each key
            todo = [first[k] for k in unique if earlier.get(k, {"error": "x"}).get("error")]
        todo = _from_main(todo, setup)
        durations = _durations(todo, duration_of, setup)
        mine = [todo[j] for j in shard_by_duration(durations, setup.world_size)[setup.rank]]
        part = PartWriter(folder, setup.rank, setup.world_size)
        audio = 0.0

        def done(finished: list[tuple[int, Transcript]]) -> None:
            nonlocal audio
            audio += sum(t.duration for _, t in finished)
            part.write(make_record(keys[i], output_of(i, t), t) for i, t in finished)

        if mine:
            decode(mine, done)
        part.finish()
        ranks = _gather((part.count, audio, part.records), setup)  # also: rank 0 waits here for every rank's share
        summary = ShardSummary(inputs=len(unique), done_before=len(unique) - len(todo), ranks=setup.world_size,
                               done_now=sum(n for n, _, _ in ranks), audio_seconds_now=sum(a for _, a, _ in ranks),
                               is_main=setup.is_main, note=summary_note)
        if setup.is_main:
            records = read_records(folder) if folder is not None else {r["key"]: r for _, _, kept in ranks for r in kept}
            summary.output, summary.rejects = merge(keys, records)
            summary.failed = len(summary.rejects)
        summary.wall_seconds = time.perf_counter() - start
    return summary


def _from_main(todo: list[int], setup: DistributedSetup) -> list[int]:
    """Rank 0's `todo` on every rank."""
    if setup.world_size == 1:
        return todo
    from .training.distributed import broadcast_from_main

    return broadcast_from_main(todo)


def _durations(todo: list[int], duration_of: Callable[[int], float], setup: DistributedSetup) -> list[float]:
    """The duration of each input of `todo` (zeros with one rank: it takes them all anyway). Each
    rank asks for every world_size-th one (reading file headers is the slow part on a shared disk),
    then all ranks get all of them."""
    world = setup.world_size
    if world == 1:
        return [0.0] * len(todo)
    import torch.distributed as dist

    gathered: list[list[float]] = [[] for _ in range(world)]
    dist.all_gather_object(gathered, [float(duration_of(i)) for i in todo[setup.rank::world]])
    durations = [0.0] * len(todo)
    for rank, values in enumerate(gathered):
        durations[rank::world] = values
    return durations


def _gather(value: tuple[int, float, list[dict]], setup: DistributedSetup) -> list[tuple[int, float, list[dict]]]:
    """Every rank's `value` on rank 0 (after all ranks have finished their shares); [value] elsewhere."""
    if setup.world_size == 1:
        return [value]
    from .training.distributed import gather_to_main

    return gather_to_main(value, setup) or [value]

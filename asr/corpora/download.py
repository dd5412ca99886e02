"""Downloading and unpacking public corpora: resumable HTTP(S) downloads with checksums, and
archive extraction that runs once and refuses members that would land outside the target folder.
What each corpus publishes (addresses, checksums, subsets) lives in its module in `asr.corpora`.

Only the standard library is used for the network (urllib), so a download needs no extra package.
"""

from __future__ import annotations

import hashlib
import os
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath
from urllib.error import HTTPError, URLError
from urllib.request import Request, urlopen

from tqdm import tqdm

@dataclass(frozen=True)
class CorpusArchive:
    """A corpus published as one archive: where, its checksums where known, and the folder it unpacks to."""

    url: str
    sha256: str | None
    md5: str | None
    top: str

    @property
    def name(self) -> str:
        return self.url.rsplit("/", 1)[-1]


_CHUNK = 1 << 20
_USER_AGENT = "asr-toolkit/0.1 (python urllib)"


class DownloadError(RuntimeError):
    """A download or extraction that failed; the message says what to do about it."""


# --------------------------------------------------------------------------- download


def download(
    url: str,
    dest: str | os.PathLike,
    sha256: str | None = None,
    md5: str | None = None,
    progress: bool = True,
    timeout: float = 60.0,
    size: int | None = None,
) -> Path:
    """Download `url` to `dest` and return `dest`.

    The data goes to `dest.part` first, so `dest` only ever holds a complete file; an interrupted
    download leaves the `.part`, and the next call resumes it with a Range request (starting over
    when the server ignores the range). The checksums given are verified, and a file that fails
    them is deleted; so is one whose length is not `size` bytes, when given (for files published
    without checksums). When `dest` exists and matches (or no checksum is given) nothing is fetched.
    `timeout` (seconds) bounds each connection attempt and each read.
    """
    dest = Path(dest)
    if dest.is_file():
        if not checksum_problems(dest, sha256, md5, size):
            return dest
        dest.unlink()  # a stale or damaged copy: fetch it again
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")

    offset = part.stat().st_size if part.is_file() else 0
    response = _open(url, offset, timeout)
    if offset and not (response.status == 206 and _range_start(response) == offset):
        # 200: the server ignores ranges and sends the whole file, so start over with it.
        # 416 (the range starts at or past the end) or another range: ask for the whole file.
        if response.status != 200:
            response.close()
            response = _open(url, 0, timeout)
        offset = 0
    with response:
        length = response.headers.get("Content-Length")
        expected = offset + int(length) if length and length.isdigit() else None
        received = offset
        bar = tqdm(total=expected, initial=offset, unit="B", unit_scale=True, unit_divisor=1024,
                   desc=dest.name, disable=not progress, leave=False)
        try:
            with open(part, "ab" if offset else "wb") as f:
                while True:
                    chunk = response.read(_CHUNK)
                    if not chunk:
                        break
                    f.write(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
        except OSError as e:  # reset connections and read timeouts
            raise DownloadError(
                f"download of {url} was interrupted after {received} bytes ({_describe(e)}); "
                f"run the same command again to resume from {part}"
            ) from None
        finally:
            bar.close()
    # A closed connection is not always an exception: urllib may just return no more data.
    if expected is not None and received < expected:
        raise DownloadError(
            f"download of {url} was interrupted after {received} of {expected} bytes; "
            f"run the same command again to resume from {part}"
        )

    problems = checksum_problems(part, sha256, md5, size)
    if problems:
        part.unlink()
        raise DownloadError(f"{dest.name} from {url} is damaged or not the expected file: {'; '.join(problems)}. "
                            f"The file was deleted; run again to download it anew.")
    os.replace(part, dest)
    return dest


def _open(url: str, offset: int, timeout: float):
    """The open HTTP response for `url` from byte `offset`; a 416 answer is returned, not raised."""
    headers = {"User-Agent": _USER_AGENT}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    try:
        return urlopen(Request(url, headers=headers), timeout=timeout)
    except HTTPError as e:
        if e.code == 416 and offset:
            return e
        raise DownloadError(f"{url} could not be downloaded: the server answered HTTP {e.code} {e.reason}. "
                            f"{_LOCAL_COPY_HINT}") from None
    except (URLError, OSError) as e:
        raise DownloadError(f"{url} could not be reached ({_describe(e)}). {_LOCAL_COPY_HINT}") from None


_LOCAL_COPY_HINT = ("Check the network connection, or fetch the corpus by other means and point the recipe at "
                    "the local copy with --corpus-dir.")


def _range_start(response) -> int | None:
    """First byte of a 206 answer, from 'Content-Range: bytes START-END/TOTAL'."""
    value = response.headers.get("Content-Range", "")
    try:
        return int(value.split()[1].split("-")[0])
    except (IndexError, ValueError):
        return None


def _describe(error: BaseException) -> str:
    reason = getattr(error, "reason", None)
    return str(reason or error) or type(error).__name__


def file_digest(path: str | os.PathLike, algorithm: str) -> str:
    """Hex digest of a file, read in 1 MiB chunks."""
    digest = hashlib.new(algorithm)
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def checksum_problems(path: Path, sha256: str | None, md5: str | None, size: int | None = None) -> list[str]:
    """What is wrong with `path` against the size and checksums given (None: not checked); [] when nothing."""
    problems = []
    if size is not None and path.stat().st_size != size:
        problems.append(f"size expected {size} bytes, got {path.stat().st_size}")
    for algorithm, expected in (("sha256", sha256), ("md5", md5)):
        if expected is None:
            continue
        actual = file_digest(path, algorithm)
        if actual.lower() != expected.strip().lower():
            problems.append(f"{algorithm} expected {expected}, got {actual}")
    return problems


# --------------------------------------------------------------------------- extract


def extract(archive: str | os.PathLike, dest_dir: str | os.PathLike) -> None:
    """Unpack a .tar.gz/.tgz/.tar (also .tar.bz2/.tar.xz) or .zip into `dest_dir`, once.

    Success leaves a marker `dest_dir/.extracted-<archive name>`; while it exists the call does
    nothing. Members with absolute paths or '..' components are refused (DownloadError), and tar
    archives go through tarfile's 'data' filter, which also refuses links out of `dest_dir` and
    special files.
    """
    archive, dest_dir = Path(archive), Path(dest_dir)
    marker = dest_dir / f".extracted-{archive.name}"
    if marker.exists():
        return
    if not archive.is_file():
        raise FileNotFoundError(f"{archive}: archive not found")
    name = archive.name.lower()
    dest_dir.mkdir(parents=True, exist_ok=True)
    try:
        if name.endswith((".tar.gz", ".tgz", ".tar", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")):
            _extract_tar(archive, dest_dir)
        elif name.endswith(".zip"):
            _extract_zip(archive, dest_dir)
        else:
            raise ValueError(f"{archive}: unknown archive type (expected .tar.gz, .tgz, .tar or .zip)")
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError) as e:
        if isinstance(e, getattr(tarfile, "FilterError", ())):
            raise DownloadError(f"{archive}: refusing to extract an unsafe member ({e})") from None
        raise DownloadError(f"{archive}: extraction failed ({_describe(e)}); if the archive is damaged, "
                            f"delete it and download it again") from None
    marker.write_text(f"{archive.resolve()}\n", encoding="utf-8")


def _unsafe_member(name: str) -> str | None:
    """Why an archive member name must not be extracted, or None when it is safe."""
    posix, windows = PurePosixPath(name), PureWindowsPath(name)
    if posix.is_absolute() or windows.is_absolute() or windows.drive or name.startswith(("/", "\\")):
        return "absolute path"
    if ".." in posix.parts or ".." in windows.parts:
        return "'..' in path"
    return None


def _extract_tar(archive: Path, dest_dir: Path) -> None:
    def check(member: tarfile.TarInfo, path: str) -> tarfile.TarInfo | None:
        problem = _unsafe_member(member.name)
        if problem:
            raise DownloadError(f"{archive}: refusing to extract member {member.name!r} ({problem})")
        return tarfile.data_filter(member, path) if hasattr(tarfile, "data_filter") else member

    # "r:*" streams through the archive once; the filter sees each member before it is written.
    with tarfile.open(archive, "r:*") as tar:
        if hasattr(tarfile, "data_filter"):
            tar.extractall(dest_dir, filter=check)
        else:  # Python without PEP 706: check every name up front instead
            members = tar.getmembers()
            for member in members:
                check(member, str(dest_dir))
                if member.issym() or member.islnk() or member.isdev():
                    raise DownloadError(f"{archive}: refusing to extract link or device {member.name!r}")
            tar.extractall(dest_dir, members=members)


def _extract_zip(archive: Path, dest_dir: Path) -> None:
    with zipfile.ZipFile(archive) as zf:
        infos = zf.infolist()
        for info in infos:
            problem = _unsafe_member(info.filename)
            if problem:
                raise DownloadError(f"{archive}: refusing to extract member {info.filename!r} ({problem})")
        zf.extractall(dest_dir, members=infos)


# --------------------------------------------------------------------------- corpora published as one archive


def download_archive(archive: CorpusArchive, dest_dir: str | os.PathLike, url: str | None = None,
                     progress: bool = True) -> Path:
    """Download and extract `archive` into `dest_dir`, once; returns the folder it unpacks to (what
    `asr prepare` takes). `url` replaces the official address (a mirror); the checksums still apply."""
    dest_dir = Path(dest_dir)
    if not (dest_dir / f".extracted-{archive.name}").exists():
        path = download(url or archive.url, dest_dir / archive.name, sha256=archive.sha256, md5=archive.md5,
                        progress=progress)
        extract(path, dest_dir)
    top = dest_dir / archive.top
    if not top.is_dir():
        raise DownloadError(f"{dest_dir / archive.name} did not contain the expected {archive.top}/ folder")
    return top

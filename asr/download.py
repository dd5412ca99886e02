"""Downloading and unpacking public corpora: resumable HTTP(S) downloads with checksums, and
archive extraction that runs once and refuses members that would land outside the target folder.

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

LIBRISPEECH_URL = "https://www.openslr.org/resources/12"
# subset -> (archive name, md5) as published in https://www.openslr.org/resources/12/md5sum.txt
LIBRISPEECH_SUBSETS: dict[str, tuple[str, str | None]] = {
    "dev-clean": ("dev-clean.tar.gz", "42e2234ba48799c1f50f24a7926300a1"),
    "dev-other": ("dev-other.tar.gz", "c8d0bcc9cca99d4f8b62fcc847357931"),
    "test-clean": ("test-clean.tar.gz", "32fa31d27d2e1cad72775fee3f4849a9"),
    "test-other": ("test-other.tar.gz", "fb5a50374b501bb3bac4815ee91d3135"),
    "train-clean-100": ("train-clean-100.tar.gz", "2a93770f6d5c6c964bc36631d331a522"),
    "train-clean-360": ("train-clean-360.tar.gz", "c0e676e450a7ff2f54aeade5171606fa"),
    "train-other-500": ("train-other-500.tar.gz", "d1a0fd59409feb2c614ce4d30c387708"),
}

# Mini LibriSpeech (a small LibriSpeech subset for quick experiments); md5sum.txt of resource 31.
MINI_LIBRISPEECH_URL = "https://www.openslr.org/resources/31"
MINI_LIBRISPEECH_SUBSETS: dict[str, tuple[str, str | None]] = {
    "dev-clean-2": ("dev-clean-2.tar.gz", "6d7ab67ac6a1d2c993d050e16d61080d"),
    "train-clean-5": ("train-clean-5.tar.gz", "5df7d4e78065366204ca6845bb08f490"),
}

# A GitHub tag archive: GitHub publishes no checksum for it (and may regenerate it).
FSDD_URL = "https://github.com/Jakobovski/free-spoken-digit-dataset/archive/refs/tags/v1.0.10.tar.gz"
FSDD_ARCHIVE = "free-spoken-digit-dataset-1.0.10.tar.gz"

# LibriSpeech's official language-model resources (openslr resource 11), for beam search with a
# lexicon and an n-gram LM. openslr publishes no checksums for them; the sizes (bytes) are those
# Kaldi's egs/librispeech/s5/local/download_lm.sh checks, and download() verifies them.
LIBRISPEECH_LM_URL = "https://www.openslr.org/resources/11"
LIBRISPEECH_LM_FILES: dict[str, int | None] = {
    "librispeech-vocab.txt": 1737588,
    "librispeech-lexicon.txt": 5627653,
    "3-gram.arpa.gz": 759636181,
    "3-gram.pruned.1e-7.arpa.gz": 34094057,
    "3-gram.pruned.3e-7.arpa.gz": 13654242,
    "4-gram.arpa.gz": 1355172078,
}
# Fetched when no file is named: what a lexicon-constrained beam search with an LM needs (~41 MB).
LIBRISPEECH_LM_DEFAULT = ("librispeech-vocab.txt", "librispeech-lexicon.txt", "3-gram.pruned.1e-7.arpa.gz")


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


ARCHIVES: dict[str, CorpusArchive] = {
    # CMU publishes no checksum for AN4 (64 MB, 948 train + 130 test utterances, SPHERE audio).
    "an4": CorpusArchive("http://www.speech.cs.cmu.edu/databases/an4/an4_sphere.tar.gz", None, None, "an4"),
    # openslr resource 51 (~51 GB). sha256 as in torchaudio's torchaudio/datasets/tedlium.py.
    "tedlium": CorpusArchive("https://www.openslr.org/resources/51/TEDLIUM_release-3.tgz",
                             "ad1e454d14d1ad550bc2564c462d87c7a7ec83d4dc2b9210f22ab4973b9eccdb", None, "TEDLIUM_release-3"),
    # keithito.com (2.6 GB). sha256 as in torchaudio's torchaudio/datasets/ljspeech.py.
    "ljspeech": CorpusArchive("https://data.keithito.com/data/speech/LJSpeech-1.1.tar.bz2",
                              "be1a30453f28eb8dd26af4101ae40cbf2c50413b1bb21936cbcdc6fae3de8aa5", None, "LJSpeech-1.1"),
}

CORPORA = ("librispeech", "mini-librispeech", "librispeech-lm", "fsdd", "an4", "tedlium", "ljspeech", "commonvoice")
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
        if not _checksum_problems(dest, sha256, md5, size):
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

    problems = _checksum_problems(part, sha256, md5, size)
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


def _checksum_problems(path: Path, sha256: str | None, md5: str | None, size: int | None = None) -> list[str]:
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


# --------------------------------------------------------------------------- corpora


def download_librispeech(
    subsets: list[str],
    dest_dir: str | os.PathLike,
    base_url: str | None = None,
    keep_archives: bool = True,
    progress: bool = True,
) -> Path:
    """Download and extract LibriSpeech subsets (resource 12, or Mini LibriSpeech's dev-clean-2 and
    train-clean-5 from resource 31) into `dest_dir`; returns `dest_dir/LibriSpeech`, which then
    holds one folder per subset. `base_url` replaces the openslr address (a mirror such as
    https://us.openslr.org/resources/12). A subset already extracted is neither downloaded nor
    extracted again, even when its archive was deleted (`keep_archives=False`).
    """
    dest_dir = Path(dest_dir)
    for subset in subsets:
        if subset in LIBRISPEECH_SUBSETS:
            url, (archive_name, md5) = LIBRISPEECH_URL, LIBRISPEECH_SUBSETS[subset]
        elif subset in MINI_LIBRISPEECH_SUBSETS:
            url, (archive_name, md5) = MINI_LIBRISPEECH_URL, MINI_LIBRISPEECH_SUBSETS[subset]
        else:
            known = ", ".join([*LIBRISPEECH_SUBSETS, *MINI_LIBRISPEECH_SUBSETS])
            raise ValueError(f"unknown LibriSpeech subset {subset!r}; choose from {known}")
        if (dest_dir / f".extracted-{archive_name}").exists():
            continue
        archive = download(f"{(base_url or url).rstrip('/')}/{archive_name}", dest_dir / archive_name,
                           md5=md5, progress=progress)
        extract(archive, dest_dir)
        if not keep_archives:
            archive.unlink()
    return dest_dir / "LibriSpeech"


def download_fsdd(dest_dir: str | os.PathLike, url: str = FSDD_URL, progress: bool = True) -> Path:
    """Download and extract the Free Spoken Digit Dataset into `dest_dir`; returns the folder that
    holds `recordings/` (what prepare_fsdd takes)."""
    dest_dir = Path(dest_dir)
    archive = dest_dir / FSDD_ARCHIVE
    if not (dest_dir / f".extracted-{FSDD_ARCHIVE}").exists():
        extract(download(url, archive, progress=progress), dest_dir)
    # The archive's top folder is named by GitHub (repository-tag), so look for it.
    found = sorted(p.parent for p in dest_dir.glob("*/recordings") if p.is_dir())
    if not found:
        raise DownloadError(f"{archive} did not contain a recordings/ folder")
    return found[0]


def download_librispeech_lm(
    files: list[str] | None,
    dest_dir: str | os.PathLike,
    base_url: str | None = None,
    progress: bool = True,
) -> Path:
    """Download LibriSpeech's LM resources (resource 11) into `dest_dir` and return it: the files
    named (default LIBRISPEECH_LM_DEFAULT), each checked against its published size. They are
    not archives; the ARPA files stay gzip-compressed. Files already complete are not fetched."""
    dest_dir = Path(dest_dir)
    for name in files or LIBRISPEECH_LM_DEFAULT:
        if name not in LIBRISPEECH_LM_FILES:
            raise ValueError(f"unknown LibriSpeech LM file {name!r}; choose from {', '.join(LIBRISPEECH_LM_FILES)}")
        download(f"{(base_url or LIBRISPEECH_LM_URL).rstrip('/')}/{name}", dest_dir / name,
                 size=LIBRISPEECH_LM_FILES[name], progress=progress)
    return dest_dir


def download_archive(corpus: str, dest_dir: str | os.PathLike, url: str | None = None, progress: bool = True) -> Path:
    """Download and extract the archive of a corpus in ARCHIVES ('an4', 'tedlium', 'ljspeech')
    into `dest_dir`, once; returns the folder it unpacks to (what `asr prepare` takes). `url`
    replaces the official address (a mirror); the checksums still apply."""
    archive = ARCHIVES[corpus]
    dest_dir = Path(dest_dir)
    if not (dest_dir / f".extracted-{archive.name}").exists():
        path = download(url or archive.url, dest_dir / archive.name, sha256=archive.sha256, md5=archive.md5,
                        progress=progress)
        extract(path, dest_dir)
    top = dest_dir / archive.top
    if not top.is_dir():
        raise DownloadError(f"{dest_dir / archive.name} did not contain the expected {archive.top}/ folder")
    return top


def unpack_commonvoice(archive: str, dest_dir: str | os.PathLike, sha256: str | None = None,
                       progress: bool = True) -> Path:
    """Common Voice is downloaded by hand (its site asks for an e-mail address and agreement to
    its terms): `archive` is that .tar.gz, or the download link it gave (fetched with resume).
    Extracts it into `dest_dir` once and returns the language folder inside (the one holding
    validated.tsv), or `dest_dir` when the archive holds several languages."""
    dest_dir = Path(dest_dir)
    if "://" in archive:
        name = archive.split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1] or "commonvoice.tar.gz"
        path = dest_dir / name
        if not (dest_dir / f".extracted-{name}").exists():
            download(archive, path, sha256=sha256, progress=progress)
    else:
        path = Path(archive).expanduser()
        if not (dest_dir / f".extracted-{path.name}").exists():
            if not path.is_file():
                raise FileNotFoundError(f"{path}: Common Voice archive not found")
            problems = _checksum_problems(path, sha256, None)
            if problems:
                raise DownloadError(f"{path} is not the expected archive: {'; '.join(problems)}")
    extract(path, dest_dir)
    found = sorted({p.parent for p in dest_dir.glob("*/*/validated.tsv")} | {p.parent for p in dest_dir.glob("*/validated.tsv")})
    return found[0] if len(found) == 1 else dest_dir


def download_corpus(corpus: str, dest: str | os.PathLike, subsets: list[str] | None = None,
                    archive: str | None = None) -> Path:
    """`asr download`: fetch a corpus into `dest` and return the folder to give `asr prepare`.

    'librispeech' needs the subsets named (all of them are ~60 GB); 'mini-librispeech' defaults to
    both of its subsets; 'librispeech-lm' takes LM file names (default: vocabulary, lexicon and
    the pruned 3-gram); 'commonvoice' needs `archive` (the downloaded .tar.gz or its link); the
    others take none.
    """
    if corpus == "librispeech":
        if not subsets:
            raise ValueError(f"name the LibriSpeech subsets to download with --subsets "
                             f"(choose from {', '.join(LIBRISPEECH_SUBSETS)})")
        return download_librispeech(subsets, dest)
    if corpus == "mini-librispeech":
        return download_librispeech(subsets or list(MINI_LIBRISPEECH_SUBSETS), dest)
    if corpus == "librispeech-lm":
        return download_librispeech_lm(subsets, dest)
    if corpus not in CORPORA:
        raise ValueError(f"unknown corpus {corpus!r}; choose one of {', '.join(CORPORA)}")
    if subsets:
        raise ValueError(f"{corpus} has no subsets to choose; drop --subsets")
    if archive and corpus != "commonvoice":
        raise ValueError(f"--archive is for commonvoice; {corpus} is downloaded from its official address")
    if corpus == "commonvoice":
        if not archive:
            raise ValueError("Common Voice is downloaded by hand from https://commonvoice.mozilla.org/datasets "
                             "(it asks for agreement to its terms): pass the .tar.gz or its download link with --archive")
        return unpack_commonvoice(archive, dest)
    if corpus == "fsdd":
        return download_fsdd(dest)
    return download_archive(corpus, dest)

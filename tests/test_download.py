"""asr.corpora.download and the corpora's downloads: resumable downloads with checksums, one-time safe extraction,
corpus helpers.

Everything runs against a throwaway HTTP server on 127.0.0.1 that supports Range requests and
can cut a response short to simulate a dropped connection; no test touches the network.
"""

from __future__ import annotations

import hashlib
import io
import re
import socket
import tarfile
import threading
import time
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import soundfile

from asr.corpora import an4, download_corpus, ljspeech, tedlium
from asr.corpora import fsdd as fsdd_module
from asr.corpora import librispeech as ls
from asr.corpora.fsdd import download_fsdd, prepare_fsdd
from asr.corpora.librispeech import (
    LIBRISPEECH_SUBSETS,
    LIBRISPEECH_URL,
    MINI_LIBRISPEECH_SUBSETS,
    download_librispeech,
    prepare_librispeech,
)
from asr.corpora.download import CorpusArchive, DownloadError, download, extract

TIMEOUT = 5.0


# --------------------------------------------------------------------------- local server


class FileServer:
    """State shared with the handler: files served, requests seen, and fault switches."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.requests: list[tuple[str, str | None]] = []  # (path, Range header)
        self.drop_after: int | None = None  # send only this many body bytes, then close
        self.honor_range = True
        self.url = ""

    def add(self, path: str, data: bytes) -> str:
        self.files[path] = data
        return self.url + path


class _Handler(BaseHTTPRequestHandler):
    timeout = TIMEOUT  # a stuck client cannot hold a server thread forever

    def log_message(self, format, *args):  # keep pytest output clean
        pass

    def do_GET(self):
        state: FileServer = self.server.state  # type: ignore[attr-defined]
        range_header = self.headers.get("Range")
        state.requests.append((self.path, range_header))
        data = state.files.get(self.path)
        if data is None:
            self.send_error(404, "not found")
            return
        start = 0
        if range_header and state.honor_range:
            match = re.fullmatch(r"bytes=(\d+)-", range_header)
            assert match, range_header
            start = int(match.group(1))
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Accept-Ranges", "bytes")
        self.end_headers()
        if state.drop_after is not None:
            body = body[: state.drop_after]  # the connection closes after this: an interruption
        self.wfile.write(body)
        self.wfile.flush()


@pytest.fixture
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.daemon_threads = True
    state = FileServer()
    state.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.state = state  # type: ignore[attr-defined]
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(TIMEOUT)


@pytest.fixture(autouse=True)
def no_proxy(monkeypatch):
    """A proxy from the environment would send 127.0.0.1 traffic elsewhere."""
    for name in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)


def _tar_gz(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


@pytest.fixture
def archive_bytes() -> bytes:
    """A .tar.gz of ~200 kB (random, so gzip cannot shrink it)."""
    rng = np.random.default_rng(0)
    return _tar_gz({"corpus/a.bin": rng.bytes(150_000), "corpus/sub/b.txt": b"hello\n" * 8000})


def _digests(data: bytes) -> tuple[str, str]:
    return hashlib.sha256(data).hexdigest(), hashlib.md5(data).hexdigest()


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --------------------------------------------------------------------------- download


def test_download_verifies_both_checksums(server, archive_bytes, tmp_path):
    url = server.add("/data.tar.gz", archive_bytes)
    sha256, md5 = _digests(archive_bytes)
    dest = download(url, tmp_path / "dl" / "data.tar.gz", sha256=sha256, md5=md5, progress=False, timeout=TIMEOUT)
    assert dest == tmp_path / "dl" / "data.tar.gz"
    assert dest.read_bytes() == archive_bytes
    assert not (tmp_path / "dl" / "data.tar.gz.part").exists()
    assert server.requests == [("/data.tar.gz", None)]


@pytest.mark.parametrize("kind", ["md5", "sha256"])
def test_checksum_mismatch_raises_and_leaves_no_file(server, archive_bytes, tmp_path, kind):
    url = server.add("/data.tar.gz", archive_bytes)
    wrong = "0" * (32 if kind == "md5" else 64)
    sha256, md5 = _digests(archive_bytes)
    actual = md5 if kind == "md5" else sha256
    with pytest.raises(DownloadError) as info:
        download(url, tmp_path / "data.tar.gz", progress=False, timeout=TIMEOUT, **{kind: wrong})
    message = str(info.value)
    assert "data.tar.gz" in message and wrong in message and actual in message
    assert list(tmp_path.iterdir()) == []  # neither the file nor a .part


def test_interrupted_download_resumes_with_a_range_request(server, archive_bytes, tmp_path):
    url = server.add("/data.tar.gz", archive_bytes)
    dest = tmp_path / "data.tar.gz"
    part = tmp_path / "data.tar.gz.part"
    server.drop_after = 50_000
    with pytest.raises(DownloadError, match="interrupted"):
        download(url, dest, progress=False, timeout=TIMEOUT)
    assert not dest.exists()
    assert part.stat().st_size == 50_000
    assert part.read_bytes() == archive_bytes[:50_000]

    server.drop_after = None
    _, md5 = _digests(archive_bytes)
    download(url, dest, md5=md5, progress=True, timeout=TIMEOUT)  # with the progress bar this time
    assert server.requests[-1] == ("/data.tar.gz", "bytes=50000-")
    assert len(server.requests) == 2
    assert dest.read_bytes() == archive_bytes
    assert not part.exists()


def test_server_ignoring_range_restarts_from_zero(server, archive_bytes, tmp_path):
    url = server.add("/data.tar.gz", archive_bytes)
    (tmp_path / "data.tar.gz.part").write_bytes(b"stale bytes that must not stay in front")
    server.honor_range = False  # answers 200 with the whole file
    dest = download(url, tmp_path / "data.tar.gz", progress=False, timeout=TIMEOUT)
    assert server.requests == [("/data.tar.gz", "bytes=39-")]
    assert dest.read_bytes() == archive_bytes


def test_part_longer_than_file_starts_over(server, archive_bytes, tmp_path):
    url = server.add("/data.tar.gz", archive_bytes)
    (tmp_path / "data.tar.gz.part").write_bytes(b"x" * (len(archive_bytes) + 10))  # server answers 416
    dest = download(url, tmp_path / "data.tar.gz", progress=False, timeout=TIMEOUT)
    assert [r[1] for r in server.requests] == [f"bytes={len(archive_bytes) + 10}-", None]
    assert dest.read_bytes() == archive_bytes


def test_second_call_makes_no_request(server, archive_bytes, tmp_path):
    url = server.add("/data.tar.gz", archive_bytes)
    sha256, md5 = _digests(archive_bytes)
    dest = download(url, tmp_path / "data.tar.gz", md5=md5, progress=False, timeout=TIMEOUT)
    seen = len(server.requests)
    assert download(url, dest, md5=md5, progress=False, timeout=TIMEOUT) == dest
    assert download(url, dest, sha256=sha256, progress=False, timeout=TIMEOUT) == dest
    assert download(url, dest, progress=False, timeout=TIMEOUT) == dest  # no checksum: trusted as is
    assert len(server.requests) == seen == 1


def test_existing_file_with_wrong_checksum_is_fetched_again(server, archive_bytes, tmp_path):
    url = server.add("/data.tar.gz", archive_bytes)
    dest = tmp_path / "data.tar.gz"
    dest.write_bytes(b"damaged")
    _, md5 = _digests(archive_bytes)
    download(url, dest, md5=md5, progress=False, timeout=TIMEOUT)
    assert dest.read_bytes() == archive_bytes
    assert len(server.requests) == 1


def test_unreachable_url_suggests_a_local_copy(tmp_path):
    url = f"http://127.0.0.1:{_closed_port()}/x"
    started = time.monotonic()
    with pytest.raises(DownloadError) as info:
        download(url, tmp_path / "x", progress=False, timeout=TIMEOUT)
    assert time.monotonic() - started < TIMEOUT
    message = str(info.value)
    assert url in message and "could not be reached" in message and "--corpus-dir" in message
    assert list(tmp_path.iterdir()) == []


def test_http_error_is_a_download_error(server, tmp_path):
    with pytest.raises(DownloadError, match=r"HTTP 404.*--corpus-dir"):
        download(server.url + "/missing.tar.gz", tmp_path / "m.tar.gz", progress=False, timeout=TIMEOUT)
    assert not (tmp_path / "m.tar.gz").exists()


# --------------------------------------------------------------------------- extract


def _write_archive(path: Path, members: dict[str, bytes]) -> Path:
    if path.name.endswith(".zip"):
        with zipfile.ZipFile(path, "w") as zf:
            for name, data in members.items():
                zf.writestr(name, data)
    else:
        mode = "w:gz" if path.name.endswith((".tar.gz", ".tgz")) else "w"
        with tarfile.open(path, mode) as tar:
            for name, data in members.items():
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return path


@pytest.mark.parametrize("name", ["c.tar.gz", "c.tgz", "c.tar", "c.zip"])
def test_extract_runs_once(tmp_path, name):
    archive = _write_archive(tmp_path / name, {"top/a.txt": b"a", "top/sub/b.txt": b"bb"})
    out = tmp_path / "out"
    extract(archive, out)
    assert (out / "top" / "a.txt").read_bytes() == b"a"
    assert (out / "top" / "sub" / "b.txt").read_bytes() == b"bb"
    assert (out / f".extracted-{name}").is_file()
    (out / "top" / "a.txt").unlink()
    extract(archive, out)  # the marker says it is done: nothing is written again
    assert not (out / "top" / "a.txt").exists()


@pytest.mark.parametrize("member", ["../evil.txt", "top/../../evil.txt", "/tmp/evil-abs.txt"])
@pytest.mark.parametrize("name", ["bad.tar.gz", "bad.zip"])
def test_extract_refuses_paths_outside_the_folder(tmp_path, member, name):
    archive = _write_archive(tmp_path / name, {member: b"gotcha"})
    out = tmp_path / "deep" / "out"
    with pytest.raises(DownloadError, match="refusing"):
        extract(archive, out)
    assert not (tmp_path / "deep" / "evil.txt").exists() and not (tmp_path / "evil.txt").exists()
    assert not Path("/tmp/evil-abs.txt").exists() or Path("/tmp/evil-abs.txt").read_bytes() != b"gotcha"
    assert not (out / f".extracted-{name}").exists()


def test_extract_refuses_links_out_of_the_folder(tmp_path):
    archive = tmp_path / "link.tar"
    with tarfile.open(archive, "w") as tar:
        info = tarfile.TarInfo("top/escape")
        info.type = tarfile.SYMTYPE
        info.linkname = "/etc/passwd"
        tar.addfile(info)
    with pytest.raises(DownloadError, match="refusing"):
        extract(archive, tmp_path / "out")
    assert not (tmp_path / "out" / "top" / "escape").is_symlink()


def test_extract_without_tarfile_data_filter(tmp_path, monkeypatch):
    """Pythons before PEP 706 have no tarfile.data_filter: names and links are checked up front."""
    monkeypatch.delattr(tarfile, "data_filter")
    good = _write_archive(tmp_path / "good.tar.gz", {"top/a.txt": b"a"})
    extract(good, tmp_path / "out")
    assert (tmp_path / "out" / "top" / "a.txt").read_bytes() == b"a"
    bad = _write_archive(tmp_path / "bad.tar.gz", {"top/ok.txt": b"ok", "../evil.txt": b"gotcha"})
    with pytest.raises(DownloadError, match="refusing"):
        extract(bad, tmp_path / "out2")
    assert not (tmp_path / "evil.txt").exists()
    assert not (tmp_path / "out2" / "top" / "ok.txt").exists()  # nothing written before the check


def test_extract_damaged_archive(tmp_path):
    archive = tmp_path / "broken.tar.gz"
    archive.write_bytes(b"\x1f\x8b" + b"not gzip at all" * 10)
    with pytest.raises(DownloadError, match="download it again"):
        extract(archive, tmp_path / "out")
    assert not (tmp_path / "out" / ".extracted-broken.tar.gz").exists()
    (tmp_path / "x.rar").write_bytes(b"Rar!")
    with pytest.raises(ValueError, match="unknown archive type"):
        extract(tmp_path / "x.rar", tmp_path / "out")


# --------------------------------------------------------------------------- corpora


def _flac_bytes(seconds: float) -> bytes:
    buffer = io.BytesIO()
    samples = (0.3 * np.sin(np.arange(int(seconds * 16000)) * 0.05)).astype(np.float32)
    soundfile.write(buffer, samples, 16000, format="FLAC")
    return buffer.getvalue()


def test_download_librispeech_end_to_end(server, tmp_path, monkeypatch):
    archive = _tar_gz({
        "LibriSpeech/dev-clean-2/1/2/1-2.trans.txt": b"1-2-0000 HELLO THERE\n",
        "LibriSpeech/dev-clean-2/1/2/1-2-0000.flac": _flac_bytes(1.0),
    })
    server.add("/31/dev-clean-2.tar.gz", archive)
    monkeypatch.setitem(MINI_LIBRISPEECH_SUBSETS, "dev-clean-2", ("dev-clean-2.tar.gz", _digests(archive)[1]))
    root = download_librispeech(["dev-clean-2"], tmp_path / "dl", base_url=server.url + "/31/", progress=False)
    assert root == tmp_path / "dl" / "LibriSpeech"
    result = prepare_librispeech(root / "dev-clean-2", progress=False)
    assert [(u.id, u.text, u.speaker) for u in result.kept] == [("1-2-0000", "hello there", "1")]
    assert result.kept[0].duration == pytest.approx(1.0, abs=1e-3)

    # Extracted already: no request, even with the archive gone.
    (tmp_path / "dl" / "dev-clean-2.tar.gz").unlink()
    seen = len(server.requests)
    download_librispeech(["dev-clean-2"], tmp_path / "dl", base_url=server.url + "/31", progress=False)
    assert len(server.requests) == seen == 1


def test_download_librispeech_checks_the_table_md5(server, tmp_path, monkeypatch):
    server.add("/dev-clean.tar.gz", _tar_gz({"LibriSpeech/dev-clean/x.txt": b"x"}))
    # The real table's md5 cannot match this fake archive.
    with pytest.raises(DownloadError, match=LIBRISPEECH_SUBSETS["dev-clean"][1]):
        download_librispeech(["dev-clean"], tmp_path, base_url=server.url, progress=False)
    assert not (tmp_path / "LibriSpeech").exists()


def test_download_fsdd_returns_the_folder_with_recordings(server, tmp_path):
    wav = io.BytesIO()
    soundfile.write(wav, np.zeros(4000, dtype=np.float32) + 0.1, 8000, format="WAV")
    url = server.add("/fsdd.tar.gz", _tar_gz({
        "free-spoken-digit-dataset-1.0.10/recordings/3_jackson_0.wav": wav.getvalue(),
        "free-spoken-digit-dataset-1.0.10/README.md": b"digits\n",
    }))
    folder = download_fsdd(tmp_path, url=url, progress=False)
    assert folder == tmp_path / "free-spoken-digit-dataset-1.0.10"
    result = prepare_fsdd(folder, "test", progress=False)
    assert [(u.id, u.text, u.speaker) for u in result.kept] == [("3_jackson_0", "three", "jackson")]


def test_download_corpus_rejects_bad_requests_without_network(tmp_path):
    with pytest.raises(ValueError, match="--subsets"):
        download_corpus("librispeech", tmp_path, None)
    with pytest.raises(ValueError, match="unknown LibriSpeech subset 'dev-dirty'"):
        download_corpus("librispeech", tmp_path, ["dev-dirty"])
    with pytest.raises(ValueError, match="no subsets"):
        download_corpus("fsdd", tmp_path, ["x"])
    with pytest.raises(ValueError, match="unknown corpus"):
        download_corpus("timit", tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_official_tables():
    assert LIBRISPEECH_URL == "https://www.openslr.org/resources/12"
    assert set(LIBRISPEECH_SUBSETS) == {"dev-clean", "dev-other", "test-clean", "test-other",
                                        "train-clean-100", "train-clean-360", "train-other-500"}
    assert set(MINI_LIBRISPEECH_SUBSETS) == {"dev-clean-2", "train-clean-5"}
    for subset, (archive, md5) in {**LIBRISPEECH_SUBSETS, **MINI_LIBRISPEECH_SUBSETS}.items():
        assert archive == f"{subset}.tar.gz"
        assert md5 is None or re.fullmatch(r"[0-9a-f]{32}", md5)
    assert fsdd_module.FSDD_URL.startswith("https://github.com/Jakobovski/free-spoken-digit-dataset/")


# --------------------------------------------------------------------------- more corpora (issue 6)


def test_size_check_for_files_without_checksums(server, archive_bytes, tmp_path):
    url = server.add("/lm/vocab.txt", archive_bytes)
    with pytest.raises(DownloadError, match=f"size expected {len(archive_bytes) + 1} bytes, got {len(archive_bytes)}"):
        download(url, tmp_path / "vocab.txt", size=len(archive_bytes) + 1, progress=False, timeout=TIMEOUT)
    assert list(tmp_path.iterdir()) == []
    download(url, tmp_path / "vocab.txt", size=len(archive_bytes), progress=False, timeout=TIMEOUT)
    (tmp_path / "vocab.txt").write_bytes(archive_bytes[:100])  # a truncated copy is fetched again
    download(url, tmp_path / "vocab.txt", size=len(archive_bytes), progress=False, timeout=TIMEOUT)
    assert (tmp_path / "vocab.txt").read_bytes() == archive_bytes
    assert len(server.requests) == 3


def test_download_librispeech_lm_resources(server, tmp_path, monkeypatch):
    files = {"librispeech-vocab.txt": b"A\nABBOT\n", "librispeech-lexicon.txt": b"ABBOT\tAE1 B AH0 T\n",
             "3-gram.pruned.1e-7.arpa.gz": b"\x1f\x8b fake arpa"}
    for name, data in files.items():
        server.add(f"/11/{name}", data)
        monkeypatch.setitem(ls.LIBRISPEECH_LM_FILES, name, len(data))
    folder = ls.download_librispeech_lm(None, tmp_path / "lm", base_url=server.url + "/11", progress=False)
    assert folder == tmp_path / "lm"
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == files  # the .arpa.gz stays compressed
    ls.download_librispeech_lm(list(files), tmp_path / "lm", base_url=server.url + "/11", progress=False)
    assert len(server.requests) == 3  # complete files are not fetched again
    with pytest.raises(ValueError, match="unknown LibriSpeech LM file '5-gram.arpa.gz'"):
        download_corpus("librispeech-lm", tmp_path, ["5-gram.arpa.gz"])


def _sphere_bytes(seconds: float) -> bytes:
    samples = (np.sin(np.arange(int(seconds * 16000)) * 0.05) * 8000).astype(">i2")
    header = (f"NIST_1A\n   1024\nsample_count -i {len(samples)}\nsample_rate -i 16000\nchannel_count -i 1\n"
              f"sample_byte_format -s2 10\nsample_n_bytes -i 2\nsample_coding -s3 pcm\nend_head\n").encode()
    return header.ljust(1024, b" ") + samples.tobytes()


def test_download_an4_archive_once_then_prepare(server, tmp_path, monkeypatch):
    from asr.corpora.an4 import prepare_an4

    archive = _tar_gz({
        "an4/etc/an4_test.transcription": b"<s> YES </s> (an1-fash-b)\n",
        "an4/etc/an4_test.fileids": b"an4test_clstk/fash/an1-fash-b\n",
        "an4/wav/an4test_clstk/fash/an1-fash-b.sph": _sphere_bytes(0.5),
    })
    url = server.add("/an4/an4_sphere.tar.gz", archive)
    sha256, _ = _digests(archive)
    monkeypatch.setattr(an4, "ARCHIVE", CorpusArchive(url, sha256, None, "an4"))
    folder = download_corpus("an4", tmp_path)
    assert folder == tmp_path / "an4"
    result = prepare_an4(folder, "test", progress=False)
    assert [(u.id, u.text, u.speaker, u.duration) for u in result.kept] == [("an1-fash-b", "yes", "fash", 0.5)]
    assert download_corpus("an4", tmp_path) == folder and len(server.requests) == 1  # extracted once

    monkeypatch.setattr(an4, "ARCHIVE", CorpusArchive(url, "0" * 64, None, "an4"))
    with pytest.raises(DownloadError, match="sha256 expected 0000"):
        download_corpus("an4", tmp_path / "again")


def test_unpack_commonvoice_from_a_local_archive(tmp_path):
    archive = tmp_path / "cv-corpus-17.0-2024-03-15-en.tar.gz"
    archive.write_bytes(_tar_gz({
        "cv-corpus-17.0-2024-03-15/en/validated.tsv": b"client_id\tpath\tsentence\n",
        "cv-corpus-17.0-2024-03-15/en/train.tsv": b"client_id\tpath\tsentence\n",
    }))
    folder = download_corpus("commonvoice", tmp_path / "cv", archive=str(archive))
    assert folder == tmp_path / "cv" / "cv-corpus-17.0-2024-03-15" / "en"
    archive.unlink()  # extracted once: the archive is not needed again
    assert download_corpus("commonvoice", tmp_path / "cv", archive=str(archive)) == folder
    with pytest.raises(ValueError, match="--archive"):
        download_corpus("commonvoice", tmp_path / "cv2")
    with pytest.raises(FileNotFoundError):
        download_corpus("commonvoice", tmp_path / "cv2", archive=str(tmp_path / "missing.tar.gz"))
    with pytest.raises(ValueError, match="--archive is for commonvoice"):
        download_corpus("ljspeech", tmp_path, archive=str(archive))
    with pytest.raises(ValueError, match="no subsets"):
        download_corpus("tedlium", tmp_path, ["dev"])


def test_official_tables_of_the_other_corpora():
    assert ls.LIBRISPEECH_LM_URL == "https://www.openslr.org/resources/11"
    assert set(ls.LIBRISPEECH_LM_FILES) == {"librispeech-vocab.txt", "librispeech-lexicon.txt", "3-gram.arpa.gz",
                                            "3-gram.pruned.1e-7.arpa.gz", "3-gram.pruned.3e-7.arpa.gz", "4-gram.arpa.gz"}
    assert set(ls.LIBRISPEECH_LM_DEFAULT) <= set(ls.LIBRISPEECH_LM_FILES)
    assert an4.ARCHIVE.url == "http://www.speech.cs.cmu.edu/databases/an4/an4_sphere.tar.gz"
    assert tedlium.ARCHIVE.name == "TEDLIUM_release-3.tgz" and tedlium.ARCHIVE.top == "TEDLIUM_release-3"
    assert ljspeech.ARCHIVE.name == "LJSpeech-1.1.tar.bz2" and ljspeech.ARCHIVE.top == "LJSpeech-1.1"
    for archive in (an4.ARCHIVE, tedlium.ARCHIVE, ljspeech.ARCHIVE):
        assert archive.sha256 is None or re.fullmatch(r"[0-9a-f]{64}", archive.sha256)
        assert archive.md5 is None or re.fullmatch(r"[0-9a-f]{32}", archive.md5)

"""asr.files: an atomic write leaves the old file whole when the writer fails, and no temporary file
either way."""

from __future__ import annotations

import pytest

from asr.files import remove_stale_temp_files, temp_path, write_atomic, write_text_atomic


@pytest.mark.parametrize("durable", [True, False])
def test_write_atomic_replaces_whole_or_not_at_all(tmp_path, durable):
    path = tmp_path / "sub" / "out.txt"
    write_text_atomic(path, "first\n")
    assert path.read_text() == "first\n"

    def fail(f):
        f.write(b"half of the sec")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_atomic(path, fail, durable=durable)
    assert path.read_text() == "first\n"
    write_atomic(path, lambda f: f.write(b"second\n"), durable=durable)
    assert path.read_text() == "second\n"
    assert sorted(p.name for p in path.parent.iterdir()) == ["out.txt"]


def test_stale_temp_files_of_killed_writers_are_removed(tmp_path):
    path = tmp_path / "model.pt"
    stale = temp_path(path).with_name(f".{path.name}.tmp99999")
    stale.write_bytes(b"partial")
    write_text_atomic(path, "done")
    assert remove_stale_temp_files(path) == [stale]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt"]

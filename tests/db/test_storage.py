"""Blob storage: local folder and S3 (moto), atomic writes, failed writes leave nothing."""

from __future__ import annotations

import os
import threading

import fsspec
import pytest

from db.storage import TMP_PREFIX, Storage, checkpoint_key, corpus_key, open_storage


@pytest.fixture(params=["local", "s3"])
def any_storage(request, tmp_path) -> Storage:
    if request.param == "local":
        return Storage(str(tmp_path / "blobs"))
    return request.getfixturevalue("s3_storage")


def test_put_get_exists_delete_keys(any_storage):
    s = any_storage
    key = checkpoint_key("trump", 7, "best")
    assert key == "checkpoints/trump/7/best.safetensors"
    assert not s.exists(key)
    s.put(key, b"\x00weights")
    s.put(corpus_key("ab" * 32), "café\n".encode())
    assert s.exists(key)
    assert s.get(key) == b"\x00weights"
    assert s.size(key) == 8
    with s.open(key) as f:
        assert f.read() == b"\x00weights"
    assert s.keys() == [key, f"corpora/{'ab' * 32}.txt"]
    assert s.keys("checkpoints") == [key]
    s.put(key, b"new")  # replace
    assert s.get(key) == b"new"
    assert s.delete(key) is True
    assert s.delete(key) is False
    assert not s.exists(key)
    assert s.keys() == [f"corpora/{'ab' * 32}.txt"]
    with pytest.raises(FileNotFoundError, match="no object"):
        s.get(key)


def test_url_for_opens_with_fsspec(any_storage):
    any_storage.put("corpora/x.txt", b"hello")
    url = any_storage.url_for("corpora/x.txt")
    assert url.startswith("file://" if any_storage.is_local else "s3://")
    if any_storage.is_local:
        with fsspec.open(url, "rb") as f:
            assert f.read() == b"hello"
        assert any_storage.local_path("corpora/x.txt").read_bytes() == b"hello"
    else:
        assert any_storage.local_path("corpora/x.txt") is None
        with any_storage.fs.open(url, "rb") as f:
            assert f.read() == b"hello"


def test_put_file(any_storage, tmp_path):
    src = tmp_path / "ckpt.safetensors"
    src.write_bytes(os.urandom(3 << 20))
    any_storage.put_file("checkpoints/p/1/last.safetensors", src)
    assert any_storage.get("checkpoints/p/1/last.safetensors") == src.read_bytes()


@pytest.mark.parametrize("key", ["", "/abs", "a//b", "../x", "a/./b", "a\\b", f"a/{TMP_PREFIX}x"])
def test_invalid_keys_rejected(storage, key):
    with pytest.raises(ValueError, match="invalid storage key"):
        storage.put(key, b"x")


def test_failed_local_write_leaves_neither_key_nor_temp(storage, monkeypatch):
    storage.put("checkpoints/p/1/best.safetensors", b"old")

    def boom(fd):
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", boom)
    with pytest.raises(OSError, match="disk full"):
        storage.put("checkpoints/p/1/best.safetensors", b"new" * 1000)
    with pytest.raises(OSError, match="disk full"):
        storage.put("checkpoints/p/2/best.safetensors", b"new")
    monkeypatch.undo()
    assert storage.get("checkpoints/p/1/best.safetensors") == b"old"  # the old object is intact
    assert not storage.exists("checkpoints/p/2/best.safetensors")
    files = [os.path.join(d, f) for d, _, fs in os.walk(storage.root) for f in fs]
    assert files == [os.path.join(storage.root, "checkpoints/p/1/best.safetensors")]


def test_failed_s3_write_leaves_no_key(s3_storage, monkeypatch):
    def boom(*args, **kwargs):
        raise ConnectionError("network down")

    monkeypatch.setattr(s3_storage.fs, "pipe_file", boom)
    with pytest.raises(ConnectionError):
        s3_storage.put("corpora/a.txt", b"text")
    monkeypatch.undo()
    assert not s3_storage.exists("corpora/a.txt")
    assert s3_storage.keys() == []


def test_rename_based_filesystem_uses_a_hidden_temporary(monkeypatch):
    """A filesystem without atomic whole-object writes gets temp + move; a failed move leaves nothing."""
    s = Storage(f"memory://improbable-{os.getpid()}-{id(monkeypatch)}")
    s._atomic_put = False  # as for sftp, ftp, ...
    moves = []
    real_mv = s.fs.mv
    monkeypatch.setattr(s.fs, "mv", lambda a, b, **k: (moves.append((a, b)), real_mv(a, b, **k)))
    s.put("corpora/a.txt", b"abc")
    assert s.get("corpora/a.txt") == b"abc"
    (tmp, final), = moves
    assert os.path.basename(tmp).startswith(TMP_PREFIX) and final.endswith("corpora/a.txt")

    def broken_mv(*a, **k):
        raise OSError("interrupted")

    monkeypatch.setattr(s.fs, "mv", broken_mv)
    with pytest.raises(OSError):
        s.put("corpora/b.txt", b"def")
    assert s.keys() == ["corpora/a.txt"]
    assert s.fs.find(s.root) == [f"{s.root}/corpora/a.txt"]


def test_reader_never_sees_a_partial_object(storage):
    """A reader polling while a writer replaces a 4 MB object sees only whole versions."""
    key = "checkpoints/p/1/best.safetensors"
    size = 4 << 20
    versions = [bytes([v]) * size for v in range(6)]
    storage.put(key, versions[0])
    seen, stop = set(), threading.Event()

    def read() -> None:
        while not stop.is_set():
            data = storage.get(key)
            seen.add((len(data), data[:1], data[-1:]))
            assert data in versions

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for v in versions[1:]:
            storage.put(key, v)
    finally:
        stop.set()
        reader.join()
    assert all(n == size and a == b for n, a, b in seen)


def test_open_storage_defaults_to_data_dir(tmp_path, monkeypatch):
    from core.settings import get_settings

    monkeypatch.setenv("IMPROBABLE_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("IMPROBABLE_STORAGE_URL", raising=False)
    get_settings.cache_clear()
    try:
        s = open_storage()
        s.put("corpora/a.txt", b"x")
        assert (tmp_path / "data" / "storage" / "corpora" / "a.txt").read_bytes() == b"x"
    finally:
        get_settings.cache_clear()


def test_local_delete_prunes_empty_folders(storage):
    storage.put("checkpoints/p/1/best.safetensors", b"a")
    storage.put("checkpoints/p/1/last.safetensors", b"b")
    storage.delete("checkpoints/p/1/best.safetensors")
    assert os.path.isdir(os.path.join(storage.root, "checkpoints/p/1"))
    storage.delete("checkpoints/p/1/last.safetensors")
    assert os.listdir(storage.root) == []

"""Blob storage for corpora and checkpoints through fsspec: a local folder or any fsspec URL (s3://...).

Keys are relative POSIX paths ("corpora/<sha256>.txt"). Writes are atomic: on a local or other
filesystem the bytes go to a hidden temporary name in the same folder and are renamed over the key; on an
object store one PUT is already atomic. No reader ever sees half an object, and a failed write leaves
neither the key nor the temporary behind.

Object-store credentials and endpoints come from the usual places (AWS_* variables, or fsspec's
FSSPEC_S3_ENDPOINT_URL and friends), or pass storage options to open_storage.
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import fsspec
from fsspec.implementations.local import LocalFileSystem

from core.settings import get_settings

TMP_PREFIX = ".tmp-"
# protocols whose single whole-object write is atomic (no rename needed, and rename would copy)
ATOMIC_PUT_PROTOCOLS = frozenset({"s3", "s3a", "gs", "gcs", "az", "abfs", "abfss", "adl", "memory"})


def corpus_key(sha256: str) -> str:
    return f"corpora/{sha256}.txt"


def checkpoint_key(persona_slug: str, run_id: int | str, name: str) -> str:
    return f"checkpoints/{persona_slug}/{run_id}/{name}.safetensors"


def run_prefixes(persona_slug: str, run_id: int | str) -> tuple[str, str]:
    """The folders a training run writes under: its checkpoints (best, last, running-best) and its loss curve
    (worker.training.loss_plot_key)."""
    return f"checkpoints/{persona_slug}/{run_id}/", f"runs/{run_id}/"


def validate_key(key: str) -> str:
    parts = key.split("/")
    if not key or key.startswith("/") or "\\" in key or any(p in ("", ".", "..") for p in parts) \
            or parts[-1].startswith(TMP_PREFIX):
        raise ValueError(f"invalid storage key {key!r}: use a relative path like 'corpora/<sha256>.txt'")
    return key


class Storage:
    """Keyed blobs under one fsspec root."""

    def __init__(self, url: str, fs: fsspec.AbstractFileSystem | None = None, **storage_options: Any):
        if fs is None:
            fs, root = fsspec.core.url_to_fs(url, **storage_options)
        else:
            root = fs._strip_protocol(url)
        self.url = url
        self.fs = fs
        self.root = root.rstrip("/") or "/"
        self.is_local = isinstance(fs, LocalFileSystem)
        protocols = {fs.protocol} if isinstance(fs.protocol, str) else set(fs.protocol)
        self._atomic_put = not self.is_local and bool(protocols & ATOMIC_PUT_PROTOCOLS)
        if self.is_local:
            os.makedirs(self.root, exist_ok=True)

    def __repr__(self) -> str:
        return f"Storage({self.url!r})"

    def _path(self, key: str) -> str:
        return posixpath.join(self.root, validate_key(key))

    # -- writing -------------------------------------------------------------------------------------

    def put(self, key: str, data: bytes) -> None:
        """Store data under key, atomically replacing any previous object."""
        path = self._path(key)
        if self.is_local:
            self._put_local(path, lambda f: f.write(data))
        elif self._atomic_put:
            self.fs.pipe_file(path, bytes(data))
        else:
            self._put_via_temp(path, lambda tmp: self.fs.pipe_file(tmp, bytes(data)))

    def put_file(self, key: str, local_path: str | os.PathLike) -> None:
        """Store a local file (a large checkpoint) under key, atomically."""
        path = self._path(key)
        if self.is_local:
            def copy(f: IO[bytes]) -> None:
                with open(local_path, "rb") as src:
                    while chunk := src.read(1 << 20):
                        f.write(chunk)
            self._put_local(path, copy)
        elif self._atomic_put:
            self.fs.put_file(os.fspath(local_path), path)
        else:
            self._put_via_temp(path, lambda tmp: self.fs.put_file(os.fspath(local_path), tmp))

    def _put_local(self, path: str, write) -> None:
        folder, name = os.path.split(path)
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f"{TMP_PREFIX}{name}.", dir=folder)
        try:
            with os.fdopen(fd, "wb") as f:
                write(f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)  # atomic within one filesystem
        except BaseException:
            with contextlib.suppress(Exception):
                os.unlink(tmp)
            raise

    def _put_via_temp(self, path: str, write) -> None:
        folder, name = posixpath.split(path)
        tmp = posixpath.join(folder, f"{TMP_PREFIX}{name}.{uuid.uuid4().hex}")
        try:
            write(tmp)
            self.fs.mv(tmp, path)
        except BaseException:
            with contextlib.suppress(Exception):
                self.fs.rm_file(tmp)
            raise

    # -- reading -------------------------------------------------------------------------------------

    def get(self, key: str) -> bytes:
        try:
            return self.fs.cat_file(self._path(key))
        except FileNotFoundError:
            raise FileNotFoundError(f"no object {key!r} in {self.url}") from None

    def open(self, key: str) -> IO[bytes]:
        """A binary file object for streaming reads."""
        return self.fs.open(self._path(key), "rb")

    def exists(self, key: str) -> bool:
        path = self._path(key)
        self.fs.invalidate_cache(path)  # another process may have written or deleted it
        return self.fs.exists(path)

    def size(self, key: str) -> int:
        return self.fs.size(self._path(key))

    def keys(self, prefix: str = "") -> list[str]:
        """Every key under prefix (sorted), temporaries excluded."""
        base = posixpath.join(self.root, prefix.strip("/")) if prefix else self.root
        self.fs.invalidate_cache(base)
        if not self.fs.exists(base):
            return []
        found = self.fs.find(base)
        root = self.root.rstrip("/") + "/"
        return sorted(k for k in (p.removeprefix(root) for p in found)
                      if not posixpath.basename(k).startswith(TMP_PREFIX))

    def delete_prefix(self, prefix: str) -> list[str]:
        """Remove every key under `prefix` (a folder, "checkpoints/alice/12/"); returns the keys removed."""
        if not prefix.strip("/"):
            raise ValueError("delete_prefix needs a folder: it never empties the whole storage")
        return [key for key in self.keys(prefix) if self.delete(key)]

    def __iter__(self) -> Iterator[str]:
        return iter(self.keys())

    def url_for(self, key: str) -> str:
        """A URL any fsspec client (with the same credentials) can open."""
        return self.fs.unstrip_protocol(self._path(key))

    def local_path(self, key: str) -> Path | None:
        """The file's path when the storage is a local folder, else None."""
        return Path(self._path(key)) if self.is_local else None

    # -- deleting ------------------------------------------------------------------------------------

    def delete(self, key: str) -> bool:
        """Remove key; False if it was not there. Local: also prunes folders left empty."""
        path = self._path(key)
        if not self.is_local and not self.exists(key):  # object stores delete missing keys silently
            return False
        try:
            self.fs.rm_file(path)
        except FileNotFoundError:
            return False
        if self.is_local:
            folder = os.path.dirname(path)
            while folder != self.root and folder.startswith(self.root):
                try:
                    os.rmdir(folder)
                except OSError:
                    break
                folder = os.path.dirname(folder)
        return True


def open_storage(url: str | None = None, **storage_options: Any) -> Storage:
    """Storage at url, else IMPROBABLE_STORAGE_URL, else <data_dir>/storage."""
    return Storage(url or get_settings().effective_storage_url, **storage_options)

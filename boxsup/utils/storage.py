"""Where shared stores live: a local directory or a URI (``s3://``, ``gs://``, ``file://``, any fsspec protocol).

``open_location(root)`` gives a ``Location``: a root addressed by ``/``-separated keys, with the few
operations the proposal store, the label store and run directories need. Local roots use the OS
directly (temp file + rename, exactly as before); remote roots go through fsspec, where one PUT of a
whole object is already atomic. A remote failure other than a missing file (missing bucket, no
credentials, endpoint unreachable) is a one-line ``BoxSupError`` naming the URI and the problem.
"""

from __future__ import annotations

import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

from boxsup.errors import BoxSupError
from boxsup.utils.files import FILE_MODE, atomic_path, check_writable_dir

if TYPE_CHECKING:
    import fsspec
    import pyarrow.fs


def is_uri(location: str | os.PathLike) -> bool:
    """True for ``scheme://...`` (``file://`` included), False for a plain path."""
    return "://" in os.fspath(location)


def _without_file_scheme(location: str | os.PathLike) -> str:
    text = os.fspath(location)
    return text[len("file://"):] if text.startswith("file://") else text


def canonical(location: str | os.PathLike) -> str:
    """A form that does not depend on the working directory: local paths resolved, URIs kept as given."""
    text = _without_file_scheme(location)
    return text.rstrip("/") if is_uri(text) else str(Path(text).resolve())


def join(location: str | os.PathLike, *parts: str) -> str:
    """``location/part/...`` for a path or a URI (``pathlib`` would fold a URI's ``//``)."""
    text = os.fspath(location)
    if is_uri(text):
        return "/".join([text.rstrip("/"), *parts])
    return str(Path(text, *parts))


class LocalLocation:
    """A local directory; every write is a temp file beside the target, renamed onto it."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)

    def path(self, key: str) -> Path:
        return self.root / key

    def exists(self, key: str) -> bool:
        """Whether a file is at ``key``."""
        return (self.root / key).is_file()

    def read_bytes(self, key: str) -> bytes:
        """The file's bytes; ``FileNotFoundError`` when there is none."""
        return (self.root / key).read_bytes()

    def write_bytes(self, key: str, data: bytes) -> None:
        with self._writing(key), atomic_path(self.root / key) as tmp:
            tmp.write_bytes(data)

    def upload(self, local: str | os.PathLike, key: str) -> None:
        """Copy a local file to ``key`` atomically (big files are not read into memory)."""
        with self._writing(key), atomic_path(self.root / key) as tmp:
            shutil.copyfile(local, tmp)

    def create(self, key: str, data: bytes) -> bool:
        """Write a new file at ``key`` only if there is none, in one atomic step (``O_CREAT | O_EXCL``);
        False when one was there. Of two processes creating the same key, exactly one gets True."""
        path = self.root / key
        with self._writing(key):
            path.parent.mkdir(parents=True, exist_ok=True)
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
            except FileExistsError:
                return False
            try:
                with os.fdopen(fd, "wb") as out:
                    out.write(data)
            except BaseException:
                path.unlink()  # a half-written file would hold the key for nobody
                raise
        return True

    @contextmanager
    def _writing(self, key: str) -> Iterator[None]:
        """A directory that cannot be made or written (permissions, a full disk) as one line naming it."""
        try:
            yield
        except OSError as exc:
            raise BoxSupError(f"{self.root / key}: cannot write ({exc.strerror or _problem(exc)})") from None

    def remove(self, key: str) -> None:
        """Delete the file at ``key`` if there is one."""
        (self.root / key).unlink(missing_ok=True)

    def remove_all(self) -> None:
        """Delete the directory and everything in it."""
        shutil.rmtree(self.root, ignore_errors=True)

    def list(self, key: str = "") -> list[str]:
        """Names directly under ``key`` (files and directories); empty when there is nothing."""
        directory = self.root / key
        return sorted(os.listdir(directory)) if directory.is_dir() else []

    def ray_storage(self, key: str) -> tuple[str, pyarrow.fs.FileSystem | None]:
        """``(storage_path, storage_filesystem)`` for Ray Train's ``RunConfig``."""
        return str((self.root / key).resolve()), None


class RemoteLocation:
    """A prefix in an fsspec filesystem (S3, GCS, ...); listings are never cached (other nodes write).

    The filesystem is made in each process that uses it: fsspec's async ones (s3fs, gcsfs) refuse
    to work in a forked child (a DataLoader worker), and need not travel in a pickle.
    """

    def __init__(self, uri: str):
        self.root = uri.rstrip("/")
        self._connect()  # a bad URI or a missing fsspec backend is reported here, where the store is opened

    def _connect(self) -> None:
        import fsspec

        with self._reported(self.root):
            self._fs, self._prefix = fsspec.core.url_to_fs(self.root, use_listings_cache=False)
        self._pid = os.getpid()

    @property
    def fs(self) -> fsspec.AbstractFileSystem:
        """This process's filesystem (made again in a forked or unpickled copy)."""
        if self._fs is None or self._pid != os.getpid():
            self._connect()
        return self._fs

    def __getstate__(self) -> dict:
        return {"root": self.root, "_prefix": self._prefix, "_fs": None, "_pid": None}

    def _key_path(self, key: str) -> str:
        return f"{self._prefix}/{key}" if key else self._prefix

    def path(self, key: str) -> str:
        return f"{self.root}/{key}" if key else self.root

    @contextmanager
    def _reported(self, uri: str, writing: bool = False) -> Iterator[None]:
        """Remote failures as one line naming ``uri``; a missing file stays ``FileNotFoundError`` on reads."""
        try:
            yield
        except FileNotFoundError as exc:
            if not writing:  # a write finds no file only when the bucket (container) is missing
                raise
            raise BoxSupError(f"{uri}: cannot write ({_problem(exc)})") from None
        except BoxSupError:
            raise
        except Exception as exc:  # botocore, aiohttp, google-auth: each has its own error types
            raise BoxSupError(f"{uri}: {_problem(exc)}") from None

    def exists(self, key: str) -> bool:
        """Whether an object is at ``key``."""
        with self._reported(self.path(key)):  # not fs.isfile: it reads every failure as "no file"
            try:
                return self.fs.info(self._key_path(key))["type"] == "file"
            except FileNotFoundError:
                return False

    def read_bytes(self, key: str) -> bytes:
        """The object's bytes; ``FileNotFoundError`` when there is none."""
        with self._reported(self.path(key)):
            return self.fs.cat_file(self._key_path(key))

    def write_bytes(self, key: str, data: bytes) -> None:
        with self._reported(self.path(key), writing=True):
            self.fs.pipe_file(self._key_path(key), data)

    def upload(self, local: str | os.PathLike, key: str) -> None:
        """Upload a local file to ``key`` (one object: readers see the old one or the new one)."""
        with self._reported(self.path(key), writing=True):
            self.fs.put_file(os.fspath(local), self._key_path(key))

    def create(self, key: str, data: bytes) -> bool:
        """Write a new object at ``key`` only if there is none; False when one was there.

        Atomic where the store has a conditional write: on S3, a PUT with ``If-None-Match: *``. Other
        fsspec stores check, then write: two processes at the same moment can both get True there.
        """
        with self._reported(self.path(key), writing=True):
            try:
                self.fs.pipe_file(self._key_path(key), data, mode="create")
            except FileExistsError:
                return False
        return True

    def remove(self, key: str) -> None:
        """Delete the object at ``key`` if there is one."""
        with self._reported(self.path(key), writing=True):
            try:
                self.fs.rm_file(self._key_path(key))
            except FileNotFoundError:
                pass

    def remove_all(self) -> None:
        """Delete every object under the prefix."""
        with self._reported(self.root, writing=True):
            if self.fs.exists(self._prefix):
                self.fs.rm(self._prefix, recursive=True)

    def list(self, key: str = "") -> list[str]:
        """Names directly under ``key``; empty when there is nothing."""
        with self._reported(self.path(key)):
            try:
                entries = self.fs.ls(self._key_path(key), detail=False)
            except FileNotFoundError:
                return []
        return sorted({entry.rstrip("/").rsplit("/", 1)[-1] for entry in entries})

    def ray_storage(self, key: str) -> tuple[str, pyarrow.fs.FileSystem | None]:
        """``(storage_path, storage_filesystem)`` for Ray Train: this fsspec filesystem seen through pyarrow."""
        from pyarrow.fs import FSSpecHandler, PyFileSystem

        return self._key_path(key), PyFileSystem(FSSpecHandler(self.fs))


Location = LocalLocation | RemoteLocation


def open_location(root: str | os.PathLike) -> Location:
    """The store root ``root``: a plain path or ``file://`` URI is local, any other URI goes through fsspec."""
    text = _without_file_scheme(root)
    return RemoteLocation(text) if is_uri(text) else LocalLocation(text)


def check_output_location(location: str | os.PathLike, what: str) -> None:
    """Refuse in one line (``what`` names the setting) a local output directory that cannot be made or
    written, before any work; a URI is left to its store, whose first write reports a problem in one line."""
    text = _without_file_scheme(location)
    if not is_uri(text):
        check_writable_dir(text, what)


def read_file(location: str | os.PathLike) -> bytes:
    """The bytes of one file named by a path or a URI; ``FileNotFoundError`` when there is none."""
    text = canonical(location)
    if not is_uri(text):
        return Path(text).read_bytes()
    parent, _, name = text.rpartition("/")
    return open_location(parent).read_bytes(name)


def _problem(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__

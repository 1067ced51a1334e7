"""The embedded object store: objects as files under a directory of the hotswap home.

Atomic puts are a temp file in the same directory plus ``os.replace``; conditional writes (the
gallery lease) use ``link(2)``, which is exclusive. See components/gallery/store.py for the
guarantees every store gives.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
import threading
from pathlib import Path

from hotswap.components.gallery.store import (
    TEMP_PREFIX,
    InvalidKeyError,
    ObjectNotFoundError,
    ObjectStore,
    validate_key,
    validate_prefix,
)


class LocalObjectStore(ObjectStore):
    """Objects as files under a root directory (the embedded default).

    ``fsync`` (default on) flushes each file and its directory before returning, so a power
    loss cannot leave a renamed-but-empty file: the gallery's "CURRENT is written last" rule is
    only worth something if earlier writes are durable first.
    """

    def __init__(self, root: str | os.PathLike[str], *, fsync: bool = True) -> None:
        self.root = Path(root).expanduser().resolve()
        self.fsync = fsync
        self.root.mkdir(parents=True, exist_ok=True)

    @property
    def uri(self) -> str:
        return self.root.as_posix()

    def _path(self, key: str) -> Path:
        validate_key(key)
        path = self.root.joinpath(*key.split("/"))
        # Defence in depth against symlinks inside the root pointing elsewhere.
        if not path.resolve().is_relative_to(self.root):
            raise InvalidKeyError(f"object key {key!r} resolves outside the store root")
        return path

    def put_bytes(self, key: str, data: bytes) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=TEMP_PREFIX, dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                if self.fsync:
                    handle.flush()
                    os.fsync(handle.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        if self.fsync:
            self._fsync_dir(path.parent)

    @staticmethod
    def _fsync_dir(directory: Path) -> None:
        try:
            fd = os.open(directory, os.O_RDONLY)
        except OSError:  # some platforms cannot open directories; the rename is still atomic
            return
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def get_bytes(self, key: str) -> bytes:
        path = self._path(key)
        try:
            return path.read_bytes()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise ObjectNotFoundError(f"no object {key!r} in store {self.uri}") from None

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def list(self, prefix: str = "") -> list[str]:
        validate_prefix(prefix)
        # Walk only the deepest directory the prefix fully names, then filter by string prefix.
        base_dir = prefix.rsplit("/", 1)[0] if "/" in prefix else ""
        start = self.root.joinpath(*base_dir.split("/")) if base_dir else self.root
        if not start.is_dir():
            return []
        keys = []
        for dirpath, _dirnames, filenames in os.walk(start):
            rel_dir = Path(dirpath).relative_to(self.root).as_posix()
            for name in filenames:
                if name.startswith(TEMP_PREFIX):
                    continue
                key = name if rel_dir == "." else f"{rel_dir}/{name}"
                if key.startswith(prefix):
                    keys.append(key)
        return sorted(keys)

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def read_with_token(self, key: str) -> tuple[bytes, str] | None:
        try:
            data = self.get_bytes(key)
        except ObjectNotFoundError:
            return None
        return data, hashlib.sha256(data).hexdigest()

    def _staged(self, path: Path, data: bytes) -> str:
        """A fully written, fsynced temp file beside ``path`` (not yet visible under the key)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=TEMP_PREFIX, dir=path.parent)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        return tmp

    def put_if_absent(self, key: str, data: bytes) -> bool:
        """``link(2)`` of a complete temp file: atomic, exclusive (like O_EXCL) and never torn."""
        path = self._path(key)
        tmp = self._staged(path, data)
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
        finally:
            os.unlink(tmp)
        if self.fsync:
            self._fsync_dir(path.parent)
        return True

    def replace_if(self, key: str, data: bytes, token: str) -> bool:
        """Move the old object aside (one rename wins), check it is ``token``, link the new one."""
        path = self._path(key)
        aside = path.with_name(f"{TEMP_PREFIX}aside-{os.getpid()}-{threading.get_ident()}-{path.name}")
        try:
            os.rename(path, aside)
        except FileNotFoundError:
            return False
        try:
            if hashlib.sha256(aside.read_bytes()).hexdigest() != token:
                with contextlib.suppress(FileExistsError):
                    os.link(aside, path)  # not ours to replace: put it back
                return False
            return self.put_if_absent(key, data)
        finally:
            aside.unlink(missing_ok=True)

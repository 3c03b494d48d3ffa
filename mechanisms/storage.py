"""Files that survive crashes: atomic writes, and the result cache of finished measurements.

- Atomic writes: a reader never sees half a file, and a crash leaves the old file intact.
- `ResultCache`: finished measurements on disk, so a run killed half-way resumes where it stopped.
  Entries are keyed by (model fingerprint, code version, what was measured: dataset fingerprint,
  intervention spec, samples, seed...), pickled with a SHA-256 trailer and written atomically. A reader
  that finds a truncated or corrupt entry recomputes it. Concurrent xdist workers that need the same
  entry serialize on a file lock: one computes, the others wait and then read it. The code version is a
  hash of the library's own source, so a change to the code never serves results computed by older code.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pickle
import tempfile
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path

from filelock import FileLock


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, data, indent: int | None = 1) -> None:
    atomic_write_text(path, json.dumps(data, indent=indent, sort_keys=False) + "\n")


MISSING = object()
_DIGEST = 32


@lru_cache(maxsize=1)
def code_version() -> str:
    """Hash of the library's source files and profiles (results of other code are never reused)."""
    root = Path(__file__).resolve().parent
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        if path.suffix in {".py", ".toml"} and "__pycache__" not in path.parts:
            digest.update(str(path.relative_to(root)).encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


class ResultCache:
    """A key -> value store in memory, backed by a folder when `root` is given."""

    def __init__(self, root: Path | None, namespace: str):
        self.root = Path(root) if root is not None else None
        self.namespace = namespace
        self.memory: dict = {}
        self.hits = self.misses = self.recovered = 0

    def _path(self, key) -> Path:
        digest = hashlib.sha256(repr((self.namespace, code_version(), key)).encode()).hexdigest()
        return self.root / digest[:2] / f"{digest}.pkl"

    def get(self, key, default=MISSING):
        if key in self.memory:
            return self.memory[key]
        if self.root is None:
            return default
        path = self._path(key)
        if not path.is_file():
            return default
        data = path.read_bytes()
        payload, checksum = data[:-_DIGEST], data[-_DIGEST:]
        if len(data) <= _DIGEST or hashlib.sha256(payload).digest() != checksum:
            self.recovered += 1  # truncated or corrupt: recompute
            return default
        try:
            value = pickle.loads(payload)
        except Exception:
            self.recovered += 1
            return default
        self.memory[key] = value
        self.hits += 1
        return value

    def put(self, key, value) -> None:
        self.memory[key] = value
        if self.root is not None:
            payload = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
            atomic_write_bytes(self._path(key), payload + hashlib.sha256(payload).digest())

    @contextlib.contextmanager
    def lock(self, key):
        if self.root is None:
            yield
            return
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(path) + ".lock"):
            yield

    def get_or_compute(self, key, compute: Callable[[], object]):
        value = self.get(key)
        if value is not MISSING:
            return value
        with self.lock(key):
            value = self.get(key)  # another worker may have finished it while we waited
            if value is MISSING:
                self.misses += 1
                value = compute()
                self.put(key, value)
        return value

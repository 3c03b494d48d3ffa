"""Files that survive crashes: atomic writes, and the result cache of finished measurements.

- Atomic writes: a reader never sees half a file, and a crash leaves the old file intact.
- `ResultCache`: finished measurements on disk, so a run killed half-way resumes where it stopped.
  Entries are keyed by (model fingerprint, code version, what was measured: dataset fingerprint,
  intervention spec, samples, seed...), stored in a format that cannot run code when read (a JSON tree
  with the arrays beside it in an `.npz`; dataclasses only of types registered with `@storable`), with a
  SHA-256 trailer (integrity, not authenticity), and written atomically. A reader
  that finds a truncated or corrupt entry recomputes it. Concurrent xdist workers that need the same
  entry serialize on a file lock: one computes, the others wait and then read it. The code version is a
  hash of the library's own source, so a change to the code never serves results computed by older code.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import json
import os
import tempfile
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path

import numpy as np
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
ENTRY_SUFFIX = ".entry"

_STORABLE: dict[str, type] = {}


def storable(cls):
    """Register a dataclass as a type the result cache may store and rebuild (nothing else is rebuilt)."""
    _STORABLE[f"{cls.__module__}.{cls.__qualname__}"] = cls
    return cls


def encode(value) -> bytes:
    """A value of lists, tuples, dicts, strings, numbers, None, numpy arrays and `@storable` dataclasses
    -> bytes (an .npz: the JSON tree and the arrays; no pickle)."""
    arrays: list[np.ndarray] = []

    def tree(v):
        if v is None or isinstance(v, (bool, int, float, str)):
            return v
        if isinstance(v, np.generic):
            return v.item()
        if isinstance(v, np.ndarray):
            arrays.append(v)
            return {"__array__": len(arrays) - 1}
        if isinstance(v, list):
            return [tree(x) for x in v]
        if isinstance(v, tuple):
            return {"__tuple__": [tree(x) for x in v]}
        if isinstance(v, dict):
            return {"__dict__": [[tree(k), tree(x)] for k, x in v.items()]}
        name = f"{type(v).__module__}.{type(v).__qualname__}"
        if dataclasses.is_dataclass(v) and _STORABLE.get(name) is type(v):
            return {"__dataclass__": name, "fields": {f.name: tree(getattr(v, f.name)) for f in dataclasses.fields(v)}}
        raise TypeError(f"the result cache cannot store a {name}: register it with @storable or convert it")

    structure = json.dumps(tree(value)).encode()
    buffer = io.BytesIO()
    np.savez(buffer, __tree__=np.frombuffer(structure, dtype=np.uint8), **{f"a{i}": a for i, a in enumerate(arrays)})
    return buffer.getvalue()


def decode(data: bytes):
    """The inverse of `encode`; arrays are read with allow_pickle=False, classes only from the registry."""
    with np.load(io.BytesIO(data), allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files}
    structure = json.loads(arrays.pop("__tree__").tobytes().decode())

    def value(v):
        if isinstance(v, list):
            return [value(x) for x in v]
        if not isinstance(v, dict):
            return v
        if "__array__" in v:
            return arrays[f"a{v['__array__']}"]
        if "__tuple__" in v:
            return tuple(value(x) for x in v["__tuple__"])
        if "__dict__" in v:
            return {_hashable(value(k)): value(x) for k, x in v["__dict__"]}
        cls = _STORABLE[v["__dataclass__"]]  # KeyError: not a registered type, the entry is recomputed
        return cls(**{k: value(x) for k, x in v["fields"].items()})

    return value(structure)


def _hashable(key):
    return tuple(key) if isinstance(key, list) else key


@lru_cache(maxsize=1)
def code_version() -> str:
    """Hash of the library's source files and profiles (results of other code are never reused). The model
    organisms' training recipes (`organisms/`) are left out: they change checkpoints, which have their own
    fingerprint, not what a measurement computes."""
    root = Path(__file__).resolve().parent
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        if path.suffix in {".py", ".toml"} and "__pycache__" not in path.parts \
                and path.relative_to(root).parts[0] != "organisms":
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
        return self.root / digest[:2] / f"{digest}{ENTRY_SUFFIX}"

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
            value = decode(payload)
        except Exception:
            self.recovered += 1
            return default
        self.memory[key] = value
        self.hits += 1
        return value

    def put(self, key, value) -> None:
        self.memory[key] = value
        if self.root is not None:
            payload = encode(value)
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

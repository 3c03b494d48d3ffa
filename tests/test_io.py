"""Atomic file writes (mechanisms.storage)."""

from __future__ import annotations

import json
import os

import pytest

from mechanisms import storage as mio
from mechanisms.storage import atomic_write_bytes, atomic_write_json, atomic_write_text


def _leftovers(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


def test_atomic_write_json_round_trip(tmp_path):
    """The written file is readable JSON equal to the data, ends with a newline and leaves no temp files."""
    data = {"a": [1, 2.5, None], "b": {"c": "é"}, "d": True}
    path = tmp_path / "sub" / "dir" / "out.json"  # parents are created
    atomic_write_json(path, data)
    text = path.read_text(encoding="utf-8")
    assert json.loads(text) == data and text.endswith("\n")
    assert _leftovers(path.parent) == []


def test_atomic_write_json_replaces_existing(tmp_path):
    """Writing again replaces the previous content completely."""
    path = tmp_path / "out.json"
    atomic_write_json(path, {"long": "x" * 1000})
    atomic_write_json(path, [1])
    assert json.loads(path.read_text()) == [1]
    assert _leftovers(tmp_path) == []


def test_unserialisable_data_leaves_previous_file_intact(tmp_path):
    """An object json cannot encode raises TypeError and the old file is untouched, with no temp files."""
    path = tmp_path / "out.json"
    atomic_write_json(path, {"version": 1})
    before = path.read_bytes()
    with pytest.raises(TypeError):
        atomic_write_json(path, {"version": 2, "bad": object()})
    assert path.read_bytes() == before
    assert _leftovers(tmp_path) == []


def test_failure_while_replacing_removes_temp_file(tmp_path, monkeypatch):
    """If the final rename fails, the temp file is removed and the old file survives."""
    path = tmp_path / "out.json"
    atomic_write_text(path, "old\n")

    def broken_replace(src, dst):
        raise OSError("disk gone")

    monkeypatch.setattr(mio.os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk gone"):
        atomic_write_json(path, {"new": True})
    monkeypatch.undo()
    assert path.read_text() == "old\n"
    assert _leftovers(tmp_path) == []


def test_interrupt_while_writing_removes_temp_file(tmp_path, monkeypatch):
    """Even a KeyboardInterrupt during the write leaves no temp file and the old content intact."""
    path = tmp_path / "out.bin"
    atomic_write_bytes(path, b"old")

    def interrupted_fsync(fd):
        raise KeyboardInterrupt

    monkeypatch.setattr(mio.os, "fsync", interrupted_fsync)
    with pytest.raises(KeyboardInterrupt):
        atomic_write_bytes(path, b"new")
    monkeypatch.undo()
    assert path.read_bytes() == b"old"
    assert _leftovers(tmp_path) == []


def test_atomic_write_json_indent_none_is_compact(tmp_path):
    """indent=None writes one line of JSON."""
    path = tmp_path / "c.json"
    atomic_write_json(path, {"a": [1, 2]}, indent=None)
    assert path.read_text() == '{"a": [1, 2]}\n'
    assert os.path.getsize(path) == len('{"a": [1, 2]}\n')


def test_the_result_cache_never_runs_code_from_an_entry(tmp_path):
    """Entries are JSON + npz (no pickle): a planted pickle that would run code is treated as damaged and
    recomputed, and only registered dataclasses are rebuilt."""
    import hashlib
    import pickle

    import numpy as np

    from mechanisms.experiments.mediation import PairMediation
    from mechanisms.storage import ResultCache, decode, encode

    cache = ResultCache(tmp_path, "model")
    cache.put(("k",), PairMediation(1.0, 2.0, np.arange(3.0)))
    (entry,) = list(tmp_path.rglob("*.entry"))
    marker = tmp_path / "ran"
    payload = pickle.dumps(_Planted(str(marker)))
    entry.write_bytes(payload + hashlib.sha256(payload).digest())  # a valid checksum: integrity is not safety
    fresh = ResultCache(tmp_path, "model")
    assert fresh.get_or_compute(("k",), lambda: "recomputed") == "recomputed"
    assert not marker.exists() and fresh.recovered >= 1
    value = decode(encode({1: (["a"], np.ones(2)), "x": None}))
    assert value[1][0] == ["a"] and value["x"] is None


class _Planted:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))

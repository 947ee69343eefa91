"""Atomic writes (nextchar.files): an interrupted write leaves the old file whole and no litter."""

from __future__ import annotations

import json

import pytest

import nextchar.files as files
from nextchar.files import atomic_write_bytes, atomic_write_json


def test_atomic_write_bytes_keeps_the_old_file_when_interrupted(tmp_path, monkeypatch):
    target = tmp_path / "file.json"
    atomic_write_json(target, {"version": 1})

    def crash(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(files.os, "replace", crash)
    with pytest.raises(OSError, match="disk full"):
        atomic_write_bytes(target, b"new")
    monkeypatch.undo()
    assert json.loads(target.read_text()) == {"version": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["file.json"]  # no temporary file left behind

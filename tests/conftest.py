"""Shared fixtures: tiny corpora written by the tests and tiny trained models (tests/helpers.py
holds the corpora and settings they use).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from nextchar.training.loop import train
from tests.helpers import NAMES, model_config, train_config, train_on_prose


@pytest.fixture
def write_file(tmp_path: Path) -> Callable[..., Path]:
    """write_file(name, content) → path; content str (UTF-8) or bytes."""

    def write(name: str, content: str | bytes) -> Path:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8")
        return path

    return write


@pytest.fixture(scope="session")
def text_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny GRU trained briefly on PROSE (text format); read it, never write into it."""
    return train_on_prose(tmp_path_factory.mktemp("text-model"), "gru", steps=20)


@pytest.fixture(scope="session")
def lines_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny LSTM trained briefly on NAMES (lines format); read it, never write into it."""
    out = tmp_path_factory.mktemp("lines-model")
    train(NAMES, "mia\nemma\n", out, train_config(steps=20), model_config("lstm"), "lines", progress=False)
    return out

"""Fuzzing what nextchar reads from disk: a checkpoint's config.json and a prepared directory.

Hypothesis changes one field of a valid file to any JSON value (or the token bytes to any
bytes, with the digests recomputed so that no checksum catches it first). Whatever it writes,
opening the directory either works or is a UserError: never another exception, never a
traceback; each example within 5 s, and the process's peak memory within 200 MB of where it
began (a file declaring a huge model or corpus is refused before anything is allocated for it).
The example database is on (`.hypothesis/`), so a failure found once replays.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nextchar.checkpoint import CONFIG_NAME, load_checkpoint, save_checkpoint
from nextchar.data.prepare import prepare
from nextchar.data.prepared import PREPARED_NAME, TOKENS_NAME, PreparedCorpus
from nextchar.errors import UserError
from nextchar.models import build_model
from nextchar.text import Vocabulary
from tests.helpers import NAMES, PROSE, Bounded, model_config

JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**30), max_value=10**30)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=8,
)
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def paths(obj: object, prefix: tuple = ()) -> list[tuple]:
    """Every key path into a JSON object (the places a fuzzed value may go)."""
    out = [prefix] if prefix else []
    if isinstance(obj, dict):
        for key, value in obj.items():
            out += paths(value, (*prefix, key))
    return out


def replaced(obj: dict, path: tuple, value: object) -> dict:
    """A deep copy of `obj` with the value at `path` replaced."""
    out = json.loads(json.dumps(obj))
    target = out
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return out


@pytest.fixture(scope="module")
def checkpoint_dir(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("fuzzed-checkpoint")
    vocab = Vocabulary.from_text(PROSE)
    torch.manual_seed(0)
    save_checkpoint(directory, build_model(model_config("gru", vocab_size=len(vocab))), vocab, "text")
    return directory


def test_any_config_json_loads_or_is_one_user_error(checkpoint_dir):
    bound = Bounded(seconds=5, mb=200)  # a config declaring a huge model is refused before allocating it
    original = json.loads((checkpoint_dir / CONFIG_NAME).read_text())
    keys = [p for p in paths(original) if p[0] != "weights"]  # the weights' name and digest: tested apart

    @FUZZ
    @given(data=st.data())
    def one(data):
        path = data.draw(st.sampled_from(keys))
        value = data.draw(JSON_VALUES)
        (checkpoint_dir / CONFIG_NAME).write_text(json.dumps(replaced(original, path, value)))
        try:
            with bound.example():
                load_checkpoint(checkpoint_dir)
        except UserError as exc:
            assert "\n" not in str(exc) and str(checkpoint_dir) in str(exc)
        finally:
            (checkpoint_dir / CONFIG_NAME).write_text(json.dumps(original))

    one()
    bound.check()


@pytest.fixture(scope="module")
def prepared_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("fuzzed-prepared")
    (root / "names.txt").write_text(NAMES * 3)
    prepare([str(root / "names.txt")], root / "prepared", progress=False)
    return root / "prepared"


def test_any_prepared_directory_opens_or_is_one_user_error(prepared_dir):
    """One field of prepared.json replaced, or some token bytes with the digest recomputed."""
    bound = Bounded(seconds=5, mb=200)
    meta_path, tokens_path = prepared_dir / PREPARED_NAME, prepared_dir / TOKENS_NAME
    original, tokens = json.loads(meta_path.read_text()), tokens_path.read_bytes()

    @FUZZ
    @given(data=st.data())
    def one(data):
        if data.draw(st.booleans()):
            meta = replaced(original, data.draw(st.sampled_from(paths(original))), data.draw(JSON_VALUES))
            damaged = tokens
        else:
            at = data.draw(st.integers(0, len(tokens) - 1))
            damaged = tokens[:at] + data.draw(st.binary(min_size=1, max_size=8)) + tokens[at + 1 :]
            meta = replaced(original, ("tokens", "sha256"), hashlib.sha256(damaged).hexdigest())
            meta = replaced(meta, ("tokens", "count"), len(damaged))
        meta_path.write_text(json.dumps(meta))
        tokens_path.write_bytes(damaged)
        try:
            with bound.example():
                corpus = PreparedCorpus.open(prepared_dir)
                corpus.verify()
            assert int(corpus.tokens.max()) < len(corpus.vocab)  # what opened is what training may read
        except UserError as exc:
            assert "\n" not in str(exc)
        finally:
            meta_path.write_text(json.dumps(original))
            tokens_path.write_bytes(tokens)

    one()
    bound.check()

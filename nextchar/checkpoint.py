"""Checkpoints: weights in safetensors, everything else in readable JSON, written atomically.

A checkpoint is a directory:

    config.json                       format version, model settings, vocabulary, corpus format,
                                      training settings, metrics, and the name + SHA-256 of …
    model-<sha256[:16]>.safetensors   … the weights (no pickle anywhere)
    memory-*-<sha256[:16]>.bin        the memory index of the training text, when it has one
                                      (config.json's "memory": nextchar.data.memory, with the
                                      weights of its mixer: nextchar.recall.mixer)

Why content-addressed weight files: a checkpoint is two files, and a kill between writing
them must not pair new weights with an old description. New weights go to a new file name,
then config.json is replaced atomically (temp file + rename) to point at them, and only then
are older weights deleted. At every instant config.json names a whole, matching file.

Readers during a save (`serve -m run/` or `eval` while the run trains): the weights that the
config.json before the swap named are kept until the next save, so a reader that read the old
config.json a moment before the swap still finds its weights; one slower than that finds the
weights gone or changed, reads config.json again, and loads the new pair (READ_ATTEMPTS).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from nextchar import __version__
from nextchar.data.memory import MemoryIndex
from nextchar.errors import UserError
from nextchar.files import atomic_write_bytes, atomic_write_json
from nextchar.models import CharModel, ModelConfig, build_model
from nextchar.recall.mixer import Mixer
from nextchar.text import Vocabulary

FORMAT_VERSION = 1
CONFIG_NAME = "config.json"
MEMORY_KEY = "memory"  # config.json's description of the memory index (MemoryIndex.save) …
MIXER_KEY = "mixer"  # … and, inside it, its mixer's (nextchar.recall.mixer) …
SHARDS_KEY = "shards"  # … and its index's, one per shard (a prepared corpus is indexed in shards)
MAX_SHARDS = 4096
READ_ATTEMPTS = 5  # reads of a bundle whose JSON another process replaced meanwhile
BUNDLED_DIR = Path(__file__).parent / "bundled" / "default"


def write_bundle(
    directory: Path,
    meta: dict[str, Any],
    tensors: dict[str, torch.Tensor],
    json_name: str = CONFIG_NAME,
    stem: str = "model",
) -> None:
    """Write tensors (content-addressed) and then the JSON that names them, atomically."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    blob = save_safetensors({k: v.detach().cpu().contiguous() for k, v in tensors.items()})
    digest = hashlib.sha256(blob).hexdigest()
    weights_name = f"{stem}-{digest[:16]}.safetensors"
    previous = _named_weights(directory / json_name)  # kept for readers of the config.json replaced
    if not (directory / weights_name).exists():
        atomic_write_bytes(directory / weights_name, blob)
    atomic_write_json(directory / json_name, {**meta, "weights": {"file": weights_name, "sha256": digest}})
    for stale in directory.glob(f"{stem}-*.safetensors"):
        if stale.name not in (weights_name, previous):
            stale.unlink(missing_ok=True)
    _remove_stale_memory(directory, meta.get(MEMORY_KEY))


def _named_weights(where: Path) -> str | None:
    """The weights file a bundle's JSON names (None if there is none, or it cannot be read)."""
    try:
        return str(json.loads(where.read_text(encoding="utf-8"))["weights"]["file"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def read_bundle(directory: Path, json_name: str = CONFIG_NAME) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Read the JSON and the tensors it names; any damage becomes one clear UserError. A save
    in another process between the two reads is no damage: the JSON is read again (module docstring)."""
    directory = Path(directory)
    for attempt in range(READ_ATTEMPTS):
        raw = _config_bytes(directory / json_name)
        try:
            return _read_bundle_once(directory, json_name, raw)
        except UserError:
            last = attempt == READ_ATTEMPTS - 1
            if last or raw is None or _config_bytes(directory / json_name) == raw:
                raise  # nothing was saved meanwhile: the damage is real
    raise AssertionError("unreachable: the last attempt returns or raises")


def _config_bytes(where: Path) -> bytes | None:
    try:
        return where.read_bytes()
    except OSError:
        return None


def _read_bundle_once(
    directory: Path, json_name: str, raw: bytes | None
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The bundle whose JSON is `raw` (read by the caller, None if it could not be)."""
    where = directory / json_name
    if directory.is_file():
        raise UserError(
            f"{directory}: is a file, not a checkpoint directory; give the directory a training run "
            "wrote (`nextchar train --out DIR`), or leave the model out to use the bundled one"
        )
    if not directory.is_dir():
        raise UserError(f"{directory}: no such checkpoint directory; train one with `nextchar train`")
    if raw is None or not where.is_file():
        raise UserError(f"{directory}: not a nextchar checkpoint (no {json_name}); check the path")
    try:
        meta = json.loads(raw.decode("utf-8"))
        weights = meta["weights"]
        blob_path = directory / Path(weights["file"]).name
        expected = weights["sha256"]
    except (ValueError, UnicodeDecodeError, KeyError, TypeError) as exc:  # ValueError: JSON's, and huge integers
        message = str(exc).splitlines()[0][:200]
        raise UserError(f"{where}: damaged checkpoint description ({message}); retrain or restore it") from None
    if meta.get("format_version") != FORMAT_VERSION:
        raise UserError(
            f"{where}: checkpoint format {meta.get('format_version')!r} is not supported by this "
            f"nextchar (format {FORMAT_VERSION}); retrain with this version"
        )
    if not blob_path.is_file():
        raise UserError(f"{directory}: weights file {blob_path.name} is missing; retrain or restore it")
    blob = blob_path.read_bytes()
    if hashlib.sha256(blob).hexdigest() != expected:
        raise UserError(
            f"{blob_path}: weights are truncated or were modified (checksum mismatch); retrain or restore it"
        )
    try:
        tensors = load_safetensors(blob)
    except (SafetensorError, ValueError, RuntimeError) as exc:
        raise UserError(f"{blob_path}: unreadable weights ({exc})") from None
    return meta, tensors


@dataclass
class Checkpoint:
    """A loaded model with everything needed to use it."""

    model: CharModel
    vocab: Vocabulary
    format: str  # "text" or "lines": how the training corpus was framed
    meta: dict[str, Any] = field(default_factory=dict)  # the whole config.json (training settings, metrics)
    path: Path | None = None


def save_checkpoint(
    directory: Path,
    model: CharModel,
    vocab: Vocabulary,
    corpus_format: str,
    training: dict[str, Any] | None = None,
    metrics: dict[str, Any] | None = None,
) -> None:
    meta = {
        "format_version": FORMAT_VERSION,
        "nextchar_version": __version__,
        "model": model.config.to_json(),
        "vocabulary": vocab.to_json(),
        "format": corpus_format,
        "training": training or {},
        "metrics": metrics or {},
    }
    write_bundle(directory, meta, dict(model.state_dict()))


def load_checkpoint(directory: str | Path | None = None, device: str | torch.device = "cpu") -> Checkpoint:
    """Load a checkpoint directory (the bundled default model when `directory` is None)."""
    directory = Path(directory) if directory is not None else BUNDLED_DIR
    meta, tensors = read_bundle(directory)
    where = directory / CONFIG_NAME
    try:
        config = ModelConfig.from_json(meta["model"])
        vocab = Vocabulary.from_json(meta["vocabulary"])
        corpus_format = meta["format"]
        if corpus_format not in ("text", "lines"):
            raise ValueError(f"unknown corpus format {corpus_format!r}")
        if config.vocab_size != len(vocab):
            raise ValueError(f"model expects {config.vocab_size} symbols, vocabulary has {len(vocab)}")
        check_shapes(config, tensors)  # before anything is allocated for the model
        model = build_model(config)
        model.load_state_dict(tensors, strict=True)
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UserError(f"{where}: incompatible checkpoint ({message}); retrain with this version") from None
    for name, tensor in tensors.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise UserError(
                f"{directory}: weight {name} holds NaN or infinite values (a diverged run?); "
                "retrain, or restore the checkpoint"
            )
    model.to(device).eval()
    return Checkpoint(model, vocab, corpus_format, meta, directory)


def check_shapes(config: ModelConfig, tensors: dict[str, torch.Tensor]) -> None:
    """ValueError unless `tensors` are exactly the weights a model of `config` holds, name for
    name and shape for shape. The model is described on the meta device: nothing is allocated,
    so a config that declares a model far larger than its weights costs nothing to refuse."""
    with torch.device("meta"):
        expected = {name: tuple(t.shape) for name, t in build_model(config).state_dict().items()}
    missing, unexpected = sorted(set(expected) - set(tensors)), sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise ValueError(f"the weights lack {missing[:3]} and hold {unexpected[:3]} that the config does not describe")
    for name, shape in expected.items():
        if tuple(tensors[name].shape) != shape:
            raise ValueError(f"weight {name} is {tuple(tensors[name].shape)}; the config describes {shape}")


# ----------------------------------------------------------------------------- the memory index


def write_memory(directory: str | Path, indexes: Sequence[MemoryIndex], mixer: Mixer) -> None:
    """Add a memory and its mixer to the checkpoint in `directory`: the index's arrays first (one
    pair per shard), then config.json naming them (with the mixer's weights), then the previous
    memory's files removed."""
    directory = Path(directory)
    meta = _read_config(directory)
    described = {SHARDS_KEY: [index.save(directory) for index in indexes], MIXER_KEY: mixer.to_json()}
    atomic_write_json(directory / CONFIG_NAME, {**meta, MEMORY_KEY: described})
    _remove_stale_memory(directory, described)


def read_memory(ckpt: Checkpoint) -> tuple[list[MemoryIndex], Mixer] | None:
    """The checkpoint's memory (its index shards, memory-mapped and checked) and its mixer; None
    when it has none."""
    described = ckpt.meta.get(MEMORY_KEY)
    if described is None or ckpt.path is None:
        return None
    where = ckpt.path / CONFIG_NAME
    if not isinstance(described, dict):
        raise UserError(f"{where}: the memory's description is not a JSON object; run `nextchar index` again")
    shards = described.get(SHARDS_KEY, [described])  # one index, as the first memories were written
    if not isinstance(shards, list) or not 1 <= len(shards) <= MAX_SHARDS:
        raise UserError(
            f"{where}: the memory's shards must be a list of 1 to {MAX_SHARDS:,}; run `nextchar index` again"
        )
    indexes = [MemoryIndex.load(ckpt.path, shard, len(ckpt.vocab)) for shard in shards]
    if MIXER_KEY not in described:
        raise UserError(f"{ckpt.path}: its memory index has no mixer; run `nextchar index` again to fit one")
    return indexes, Mixer.from_json(described[MIXER_KEY], str(where))


def _read_config(directory: Path) -> dict[str, Any]:
    where = directory / CONFIG_NAME
    if not where.is_file():
        raise UserError(f"{directory}: not a nextchar checkpoint (no {CONFIG_NAME}); check the path")
    try:
        meta = json.loads(where.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:  # ValueError: JSON's, and huge integers
        message = str(exc).splitlines()[0][:200]
        raise UserError(f"{where}: damaged checkpoint description ({message}); retrain or restore it") from None
    if not isinstance(meta, dict):
        raise UserError(f"{where}: damaged checkpoint description (not a JSON object); retrain or restore it")
    return meta


def _remove_stale_memory(directory: Path, described: Any) -> None:
    """Remove the memory files that config.json (described: its "memory") no longer names."""
    keep = set()
    if isinstance(described, dict):
        shards = described.get(SHARDS_KEY, [described])
        for shard in shards if isinstance(shards, list) else []:
            if isinstance(shard, dict):
                keep |= {entry.get("file") for entry in shard.values() if isinstance(entry, dict)}
    for stale in directory.glob("memory-*.bin"):
        if stale.name not in keep:
            stale.unlink(missing_ok=True)

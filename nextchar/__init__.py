"""nextchar: character-level recurrent models for autocomplete, after MIT 6.036's RNN lecture.

Data flows one way through the package:
text (corpus → characters) → data (characters → index tensors) → models → checkpoint →
training / evaluation / sampling → completion → service and CLI.

    import nextchar
    ckpt = nextchar.train("corpus.txt", "runs/a", time_budget=60)   # nextchar.training.run.train

`nextchar.train` is imported when first used (PEP 562), so that `import nextchar` (as the
command line's parsers do) does not import torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from nextchar.training.run import train

# The one place the version is written: pyproject.toml reads it ([tool.setuptools.dynamic]).
__version__ = "0.1.0"

__all__ = ["__version__", "train"]


def __getattr__(name: str) -> Any:
    if name == "train":
        from nextchar.training.run import train

        return train
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), "train"])

"""nextchar: character-level recurrent models for autocomplete, after MIT 6.036's RNN lecture.

Data flows one way through the package:
text (corpus → characters) → data (characters → index tensors) → models → checkpoint →
training / evaluation / sampling → completion → service and CLI.
"""

# The one place the version is written: pyproject.toml reads it ([tool.setuptools.dynamic]).
__version__ = "0.1.0"

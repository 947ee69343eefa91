"""Library errors name Python parameters; the CLI prints the same mistake with its flags
(nextchar/errors.py UserError.parameter, nextchar/cli/main.py as_flags, cli/options.py map_parameters)."""

from __future__ import annotations

import argparse

import pytest
import torch

from nextchar.checkpoint import load_checkpoint
from nextchar.cli.main import as_flags, build_parser, command_flags, main
from nextchar.cli.options import PARAMETER_FLAGS
from nextchar.data.batches import StreamBatches
from nextchar.data.prepare import check_arguments
from nextchar.errors import UserError
from nextchar.sampling import sample
from nextchar.text import read_corpus
from nextchar.training.distributed import resolve_device
from tests.helpers import PROSE


def error_line(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    assert main(argv) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    prefix = f"nextchar: error: {argv[0]}: "  # every error names the command that ran
    assert lines[-1].startswith(prefix), lines[-1]
    return lines[-1].removeprefix(prefix)


def library_error(call, *args, **kwargs) -> UserError:
    with pytest.raises(UserError) as caught:
        call(*args, **kwargs)
    assert "--" not in str(caught.value), "a library message names parameters, not flags"
    return caught.value


def test_plain_user_errors_name_no_parameter():
    error = UserError("bad file")
    assert str(error) == "bad file" and error.parameter is None and error.parameters == ()
    assert UserError("x", ("a", "b")).parameters == ("a", "b")
    assert UserError("x", parameter="a").parameters == ("a",)


def test_sample_length(capsys, text_model_dir):
    error = library_error(sample, load_checkpoint(text_model_dir), length=-1)
    assert str(error) == "length must be at least 0, not -1" and error.parameter == "length"
    line = error_line(capsys, ["sample", "-m", str(text_model_dir), "--length", "-1"])
    assert line == "--length must be at least 0, not -1"


def test_seq_len_longer_than_the_text(capsys, write_file, tmp_path):
    error = library_error(StreamBatches, torch.arange(9), batch_size=4, seq_len=8)
    assert "window of seq_len=8 (+1); give more text or a smaller seq_len" in str(error)
    corpus = write_file("tiny.txt", "tiny text\n")
    argv = ["train", str(corpus), "--out", str(tmp_path / "m"), "--seq-len", "16", "--device", "cpu", "--quiet"]
    assert "window of --seq-len 16 (+1); give more text or a smaller --seq-len" in error_line(capsys, argv)


def test_invalid_utf8(capsys, write_file, tmp_path):
    bad = write_file("bad.txt", b"na\xefve text")
    error = library_error(read_corpus, bad)
    assert str(error).endswith('fix the file or pass encoding_errors="replace"')
    line = error_line(capsys, ["prepare", str(bad), "--out", str(tmp_path / "p"), "--quiet"])
    assert line.endswith("fix the file or pass --encoding-errors replace")
    error = library_error(read_corpus, bad, encoding_errors="ignore")
    assert str(error) == "encoding_errors must be 'strict' or 'replace', not 'ignore'"


def test_names_mapped_next_to_the_parser(capsys, tmp_path, write_file, text_model_dir):
    corpus = write_file("c.txt", PROSE)
    error = library_error(check_arguments, [str(corpus)], tmp_path, "rows", "corpus", "strict")
    assert str(error).startswith("corpus_format must be auto, text or lines")
    args = build_parser().parse_args(["prepare", str(corpus), "--out", str(tmp_path)])
    assert as_flags(str(error), error.parameters, command_flags(build_parser(), args)).startswith("--format must")
    line = error_line(capsys, ["eval", str(corpus), "-m", str(text_model_dir), "--adapt", "--adapt-lr", "-1"])
    assert line == "--adapt-lr must be a positive number, not -1.0"


def test_device():
    error = library_error(resolve_device, "tpu")
    assert str(error).startswith("device must be one of") and error.parameter == "device"


def flags_of(argv: list[str]) -> dict[str, str]:
    parser = build_parser()
    return command_flags(parser, parser.parse_args(argv))


def test_the_flags_are_those_of_the_command_that_ran():
    assert flags_of(["sample"])["top_k"] == "--top-k"
    assert flags_of(["predict", "x"])["k"] == "-k"  # no long flag: the short one
    assert "top_k" not in flags_of(["predict", "x"])
    assert flags_of(["lecture", "table", "abc"])["m"] == "-m"  # a sub-command's own option
    assert flags_of(["train"])["val_text"] == "--val FILE"  # mapped: train() takes the text itself


def test_as_flags_rewrites_whole_parameter_names_only():
    flags = {"out": "--out", "k": "-k", "seq_len": "--seq-len", "device": "--device"}
    assert as_flags("/tmp/out: exists; choose another out", ["out"], flags) == "/tmp/out: exists; choose another --out"
    assert as_flags("top_k and k and top-k", ["k"], flags) == "top_k and -k and top-k"
    assert as_flags("windows of seq_len=8.", ["seq_len"], flags) == "windows of --seq-len 8."
    assert as_flags("device=\"mps\": use device='cpu'", ["device"], flags) == "--device mps: use --device cpu"
    assert as_flags("seq_len is too long", [], flags) == "seq_len is too long"  # named by no parameter
    assert as_flags("stats are missing", ["stats"], flags) == "stats are missing"  # no flag for it


def test_every_mapped_flag_is_an_option_of_some_command():
    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    options = {option for p in commands.values() for a in p._actions for option in a.option_strings}
    for name, command in commands.items():
        for parameter, flag in (command.get_default(PARAMETER_FLAGS) or {}).items():
            assert flag.split()[0] in options, f"{name}: {parameter} → {flag}"

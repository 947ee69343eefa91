"""`nextchar lecture …`: every sub-command's output, and its bad inputs as one-line errors."""

from __future__ import annotations

import pytest

from nextchar.checkpoint import load_checkpoint
from nextchar.cli.main import main
from nextchar.lecture import THREE_LINES
from nextchar.training.loop import train as nextchar_train
from tests.helpers import NAMES as NAME_LIST
from tests.helpers import model_config, train_config


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(["lecture", *argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_one_line_error(code: int, err: str, message: str) -> None:
    assert code == 2
    assert "Traceback" not in err
    last = err.rstrip("\n").splitlines()[-1]
    assert last.startswith("nextchar: error: ") and message in last, last


def test_table_prints_the_lecture_table(capsys):
    code, out, _ = run(capsys, "table", "^what happens", "-m", "3")
    assert code == 0
    for row in (
        " 0       ^^^",
        " 1  ^    ^^^",
        " 2  w    ^^w",
        " 3  h    ^wh",
        " 4  a    wha",
        " 5  t    hat",
        " 6  _    at_",
        "13  s    ens",
    ):
        assert row in out
    assert "states equal the table's, one-hot coded, at all 14 steps: yes" in out


def test_weights_prints_the_lectures_matrices(capsys):
    code, out, _ = run(capsys, "weights")
    assert code == 0
    assert "W^sx (3×1) =\n  [1]\n  [0]\n  [0]" in out
    assert "W^ss (3×3) =\n  [0 0 0]\n  [1 0 0]\n  [0 1 0]" in out
    code, out, _ = run(capsys, "weights", "--alphabet", "abc", "-c", "2", "--run", "cab")
    assert code == 0 and "W^sx (6×3)" in out and "W^ss (6×6)" in out
    assert "t=3  x_t='b'   s_t = [0 1 0 1 0 0]   last 2: 'ab'" in out


def test_gradcheck_prints_the_worst_error_per_parameter(capsys):
    code, out, _ = run(capsys, "gradcheck", "--trials", "2")
    assert code == 0
    for name in ("W_sx", "W_ss", "W0_ss", "W_o", "W0_o"):
        assert any(line.startswith(name + " ") for line in out.splitlines())
    assert "passed: every finite-difference error below 1e-6" in out


@pytest.mark.slow
def test_train_reproduces_the_three_lines_saves_and_plots(capsys, tmp_path):
    out_dir, plot = tmp_path / "model", tmp_path / "lecture.png"
    code, out, _ = run(capsys, "train", "--quiet", "--out", str(out_dir), "--plot", str(plot))
    assert code == 0
    assert "every line reproduced after" in out
    for line in THREE_LINES:
        assert f"{line[0]} → {line}" in out and "✓" in out
    assert "✗" not in out
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert load_checkpoint(out_dir).model.config.kind == "rnn"
    assert main(["predict", "what happens to a dream def", "-m", str(out_dir), "-k", "1"]) == 0
    assert capsys.readouterr().out.split()[0] == "e"


def test_train_that_does_not_finish_exits_1(capsys, write_file):
    lines = write_file("lines.txt", "a rather long line to learn\n")
    code, out, _ = run(capsys, "train", "--lines", str(lines), "--steps", "3", "--check-every", "1", "--quiet")
    assert code == 1
    assert "not every line reproduced after 3 updates" in out and "✗ expected" in out


def test_load_runs_rnn_and_window_checkpoints(capsys, tmp_path):
    for kind in ("rnn", "window"):
        out = tmp_path / kind
        nextchar_train(
            NAME_LIST, "mia\nemma\n", out, train_config(steps=3), model_config(kind, context=3), "lines", progress=False
        )
        code, text, _ = run(capsys, "load", "ameli", "-m", str(out), "-k", "3")
        assert code == 0, text
        assert "after '^ameli', the NumPy engine predicts:" in text
        diff = float(text.rsplit(":", 1)[1])
        assert diff < 1e-5
    assert "window checkpoint (c = 3) as the fixed-weight RNN" in text


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["table", ""], "TEXT is empty"),
        (["table", "abc", "--start", "^^"], "--start must be one character"),
        (
            ["weights", "--alphabet", "01", "--run", "012"],
            "character '2' (position 2 of the input) is not in the alphabet '01'",
        ),
        (["weights", "--alphabet", "abc", "--encoding", "scalar"], "the scalar encoding is for two characters"),
        (["weights", "--alphabet", "aa"], "repeats a character"),
        (["train", "--clip", "-1"], "--clip must be 0 (off) or positive"),
    ],
)
def test_bad_input_is_one_line(capsys, argv, message):
    code, _, err = run(capsys, *argv)
    assert_one_line_error(code, err, message)


def test_bad_lines_and_checkpoints_are_one_line(capsys, write_file, tmp_path):
    lines = write_file("lines.txt", "what happens\nWhat Happens\n")
    code, _, err = run(capsys, "train", "--lines", str(lines), "--quiet")
    assert_one_line_error(code, err, "character 'W' (position 0 of 'What Happens') is not in the alphabet")
    out = tmp_path / "gru"
    nextchar_train(NAME_LIST, "mia\nemma\n", out, train_config(steps=1), model_config("gru"), "lines", progress=False)
    code, _, err = run(capsys, "load", "a", "-m", str(out))
    assert_one_line_error(code, err, "is a `gru` model; the lecture engine converts only the lecture's RNN")
    rnn = tmp_path / "rnn"
    nextchar_train(NAME_LIST, "mia\nemma\n", rnn, train_config(steps=1), model_config("rnn"), "lines", progress=False)
    code, _, err = run(capsys, "load", "am€", "-m", str(rnn))
    assert_one_line_error(code, err, "character '€' (position 2 of TEXT) is not in the model's alphabet")


def test_lecture_without_a_step_prints_help(capsys):
    code, out, _ = run(capsys)
    assert code == 2 and "gradcheck" in out

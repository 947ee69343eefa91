"""`nextchar lecture plot` and `nextchar lecture serve`: the page's views as PNGs, and bad input as
one-line errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from nextchar.cli.main import main
from tests.lecture.test_cli import assert_one_line_error, run

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("view", ["machine", "state", "distribution", "bptt"])
def test_plot_writes_each_view(capsys, tmp_path: Path, view: str) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / f"{view}.png"
    code, printed, _ = run(capsys, "plot", view, "what happens", "--out", str(out))
    assert code == 0 and f"plot: {out}" in printed
    assert out.read_bytes()[:8] == PNG


def test_plot_runs_a_checkpoint(capsys, tmp_path: Path, lines_model_dir: Path) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "state.png"
    code, _, _ = run(capsys, "plot", "state", "emma", "-m", str(lines_model_dir), "--unit", "3", "--out", str(out))
    assert code == 0 and out.read_bytes()[:8] == PNG


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["plot", "state", "x" * 201, "--out", "x.png"], "at most 200"),
        (["plot", "machine", "abc", "-c", "7", "--out", "x.png"], "must be 1 … 6"),
        (["plot", "bptt", "abc", "--scale", "100", "--out", "x.png"], "scale"),
        (["plot", "bptt", "!!!", "--out", "x.png"], "no characters to backpropagate"),
        (["plot", "state", "abc", "--unit", "99", "--out", "x.png"], "--unit must be"),
        (["plot", "state", "abc", "--hidden", "999", "--out", "x.png"], "--hidden must be at most 256"),
        (["plot", "nope", "abc", "--out", "x.png"], "invalid choice"),
        (["serve", "--port", "70000"], "--port must be"),
    ],
)
def test_bad_input_is_one_line(capsys, tmp_path: Path, monkeypatch, argv: list[str], message: str) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.chdir(tmp_path)
    try:
        code, _, err = run(capsys, *argv)
    except SystemExit as exc:  # a usage error (argparse) exits from the parser
        code, err = int(str(exc.code)), capsys.readouterr().err
    assert_one_line_error(code, err, message)
    assert not (tmp_path / "x.png").exists()


def test_help_names_the_new_steps(capsys) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(SystemExit):
        main(["lecture", "--help"])
    out = capsys.readouterr().out
    assert "serve" in out and "plot" in out

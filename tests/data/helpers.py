"""What the prepared-directory tests share: texts that stress the streaming, and the CLI's error line."""

from __future__ import annotations

from nextchar.cli.main import main

# Text that stresses the streaming: multi-byte characters (2, 3 and 4 bytes), a decomposed
# "e" + combining acute that NFC composes (and must compose across a chunk boundary too),
# CRLF line ends, blank and whitespace-only lines, a line without a final newline.
UNICODE = (
    "naïve café — 東京 🙂 re\u0301sume\u0301\r\n\n  \t \nline two\r\nΣίσυφος\u0301 ends here\nlast line without newline"
)
LINES_UNICODE = "añil\nbébé\r\nçà\n\n東京\n  \nzoë 🙂\ne\u0301\n"


def one_line_error(capsys, argv: list[str]) -> str:
    """Run the CLI; it must fail with exit 2 and end with one `nextchar: error:` line, no traceback."""
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert lines[-1].startswith("nextchar: error: ") and sum(line.startswith("nextchar:") for line in lines) == 1, err
    return lines[-1]

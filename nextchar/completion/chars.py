"""What a character is to a completion: a word boundary, part of the grapheme before it, a
letter of which script, worth offering (torch-free).

Boundaries end words: whitespace, punctuation (Unicode P*, not apostrophes), math and modifier
symbols (Sm, Sk). Extenders attach to the code point before them (combining marks, ZWJ,
variation selectors, emoji modifiers, tags). A letter's script is the first word of its Unicode
name (Han, Hiragana and Katakana together as CJK); digits, marks and symbols have none.
"""

from __future__ import annotations

import unicodedata

APOSTROPHES = frozenset("'’")  # inside words: don't, l’homme, o'clock
ZWJ = "\u200d"

# Scripts written without spaces between words (code point ranges).
_SPACELESS = (
    (0x0E00, 0x0EFF),  # Thai, Lao
    (0x1000, 0x109F),  # Myanmar
    (0x1780, 0x17FF),  # Khmer
    (0x3040, 0x30FF),  # Hiragana, Katakana
    (0x3400, 0x4DBF),  # CJK extension A
    (0x4E00, 0x9FFF),  # CJK unified ideographs
    (0xF900, 0xFAFF),  # CJK compatibility ideographs
    (0x20000, 0x3134F),  # CJK extensions B–G
)


def is_boundary(ch: str) -> bool:
    """True for characters that end a word: whitespace, punctuation (not apostrophes), math/modifier symbols."""
    if ch.isspace():
        return True
    category = unicodedata.category(ch)
    if category[0] == "P":
        return ch not in APOSTROPHES
    return category in ("Sm", "Sk")


def is_extender(ch: str) -> bool:
    """True for code points that attach to the previous one (they continue its grapheme)."""
    code = ord(ch)
    return (
        unicodedata.category(ch) in ("Mn", "Me", "Mc")
        or ch in (ZWJ, "\u200c")
        or 0xFE00 <= code <= 0xFE0F  # variation selectors
        or 0xE0100 <= code <= 0xE01EF
        or 0x1F3FB <= code <= 0x1F3FF  # emoji skin-tone modifiers
        or 0xE0020 <= code <= 0xE007F  # tag characters (subdivision flags)
    )


def is_regional_indicator(ch: str) -> bool:
    return 0x1F1E6 <= ord(ch) <= 0x1F1FF


def is_spaceless(ch: str) -> bool:
    code = ord(ch)
    return any(lo <= code <= hi for lo, hi in _SPACELESS)


# Letters' scripts by the first word of their Unicode name (FULLWIDTH/HALFWIDTH forms as their
# script); Han, Hiragana and Katakana are one script, CJK: Japanese mixes them inside a word.
_CJK_NAMES = ("CJK ", "HIRAGANA", "KATAKANA", "IDEOGRAPHIC ")
_SCRIPT_NAMES = (
    "LATIN GREEK COPTIC CYRILLIC ARMENIAN HEBREW ARABIC SYRIAC THAANA NKO DEVANAGARI BENGALI "
    "GURMUKHI GUJARATI ORIYA TAMIL TELUGU KANNADA MALAYALAM SINHALA THAI LAO TIBETAN MYANMAR "
    "GEORGIAN HANGUL ETHIOPIC CHEROKEE KHMER MONGOLIAN"
)
_SCRIPTS = frozenset(_SCRIPT_NAMES.split())
# Scripts written without spaces: a word in them is made of their own characters only (no
# digits either); the others also take digits and other symbols that are not boundaries.
STRICT_SCRIPTS = frozenset({"CJK", "THAI", "LAO", "MYANMAR", "KHMER"})
# The rest of a line may be only punctuation if it has this many characters (not one ":", "。"):
# on held-out lines of the Python docs, code and markup end in `)".`, `()`, ` *` (tuning.md#completion).
CLOSING_MIN = 2
SCRIPT_LOOKBACK = 64  # characters looked back for the last letter (whose script a word keeps)


def script(ch: str) -> str | None:
    """The script of a letter ("LATIN", "CYRILLIC", "CJK" for Han and kana …); None for what any
    script's words may hold: digits, marks, symbols, letters of no script listed here."""
    if unicodedata.category(ch)[0] != "L":
        return None
    name = unicodedata.name(ch, "")
    if name.startswith(("FULLWIDTH ", "HALFWIDTH ")):
        name = name.split(" ", 1)[1]
    if name.startswith(_CJK_NAMES):
        return "CJK"
    first = name.split(" ", 1)[0]
    return first if first in _SCRIPTS else None


def last_script(text: str) -> str | None:
    """The script of the last letter of `text` (within SCRIPT_LOOKBACK characters), else None."""
    for ch in reversed(text[-SCRIPT_LOOKBACK:]):
        found = script(ch)
        if found is not None:
            return found
    return None


def is_content(ch: str) -> bool:
    """True for what makes a completion worth offering: letters, digits, pictographs (So)."""
    category = unicodedata.category(ch)
    return category[0] in "LN" or category == "So"


def offered(completion: str, min_chars: int, closing: bool = False) -> bool:
    """A completion worth showing: `min_chars` characters or more before any trailing whitespace,
    and not only whitespace and punctuation — unless `closing` (the rest of a line), where
    CLOSING_MIN or more characters of punctuation may end it: `)".` after `d.update(red=1`."""
    body = completion.rstrip()
    if len(body) < min_chars:
        return False
    if any(is_content(ch) for ch in body):
        return True
    return closing and len(body) >= CLOSING_MIN


def needs_continuation(text: str) -> bool:
    """True when `text` ends inside a grapheme that cannot be complete yet (ZWJ, half a flag)."""
    if not text:
        return False
    if text[-1] == ZWJ:
        return True
    count = 0
    for ch in reversed(text):
        if not is_regional_indicator(ch):
            break
        count += 1
    return count % 2 == 1

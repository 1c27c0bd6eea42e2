"""Cleaning one text, step by step, each step configurable (``corpus.cleaning``) and counted.

In order: Unicode repair (ftfy: mojibake such as ``cafÃ©`` -> ``café``, NFC), HTML remnants (script/style
blocks, comments, tags; entities decoded), boilerplate lines (the recipe's regular expressions, matched per
line, case-insensitive), control and invisible characters, URLs (off by default), the paper's special
characters and punctuation noise (runs of repeated punctuation collapsed, decorative runs and stray symbols
removed), whitespace. ``Cleaner.clean_batch`` (or ``clean`` for one text) returns each cleaned text and the
steps that changed it, so the funnel can say what each step did.

The Unicode repair is ftfy's ``fix_text``, with its result unchanged, but its mojibake test (``is_bad``: one
large regular expression that Python's ``re`` takes about 0.65 ms to scan a 1,350-character article with) is
run for a whole batch at once in RE2 (pyarrow's ``match_substring_regex``, about 1 us a text). A text the test
clears is fixed with ``fix_encoding`` off: ftfy's encoding fix returns a text the test clears unchanged, so
only its other fixes (quotes, widths, line breaks, NFC) can change it. If they make it look like mojibake,
it is fixed again in full from the original, so the result is always ``fix_text``'s.
"""

from __future__ import annotations

import html
import re
from functools import lru_cache

import regex

from tailorkd.recipe.corpus import CleaningConfig

#: The cleaning steps in the order applied (bit i of a text's change mask is step i).
CLEANING_STEPS: tuple[str, ...] = ("unicode", "html", "boilerplate", "control_characters", "urls", "punctuation",
                                   "whitespace")

_SCRIPT_STYLE = re.compile(r"<(script|style|noscript)\b[^>]*>.*?</\1\s*>", re.IGNORECASE | re.DOTALL)
_COMMENT = re.compile(r"<!--.*?-->", re.DOTALL)
_BLOCK_TAG = re.compile(r"</?(p|div|br|li|ul|ol|h[1-6]|tr|table|section|article|blockquote)\b[^>]*>", re.IGNORECASE)
# A tag: '<' then a letter, '/' or '!' (so "a < b" and "<3" stay), up to the next '>'.
_TAG = re.compile(r"<[/!]?[A-Za-z][^<>]{0,2000}>")
_URL = re.compile(r"\b(?:https?://|www\.)\S+", re.IGNORECASE)
# Three or more of one punctuation mark; "..." is kept as an ellipsis, others collapse to one.
_REPEATED = re.compile(r"([!?,;:])\1{1,}|\.{4,}|([-–—])\2{3,}")
_DECORATIVE = re.compile(r"[*=_~#|^+<>]{3,}")
_MIXED = re.compile(r"[!?]{2,}")
_SPACES = re.compile(r"[ \t\f\v\u00a0\u2000-\u200a\u202f\u205f\u3000]+")
_BLANK_LINES = re.compile(r"\n{3,}")
# Control characters (Unicode category Cc is exactly U+0000-001F and U+007F-009F; newline is kept, and tabs
# and carriage returns are turned into spaces and newlines first) and invisible format characters that carry
# nothing in running text (zero-width, direction marks, BOM, soft hyphen); U+200D (zero-width joiner) is
# kept: emoji and Indic scripts need it.
_CONTROL = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u200b\u200c\u200e\u200f\u202a-\u202e\u2060-\u2064\ufeff\u00ad]")
# Stray symbols: So (emoji, dingbats, arrows, box drawing), Co (private use), Cs (lone surrogates), Cn
# (unassigned). The `regex` module knows Unicode categories, so this is one C-level scan, not a Python loop
# per character; no ASCII character is in them, so ASCII text skips it.
_STRAY_SYMBOL = regex.compile(r"[\p{So}\p{Co}\p{Cs}\p{Cn}]")


# Python's \s and \w are Unicode-wide; RE2's are ASCII. These contain every character Python's match
# (tests/test_corpus.py checks every code point), so RE2 finds a match wherever Python's ``re`` would.
_RE2_SPACE = r"\s\p{Z}\x0b\x1c-\x1f\x85"
_RE2_WORD = r"\p{L}\p{N}\p{M}_"


def re2_pattern(verbose: str) -> str:
    r"""A ``re.VERBOSE`` pattern of classes, alternatives and escapes as RE2 reads it: comments and unescaped
    whitespace outside classes dropped, ``\s`` and ``\w`` widened to Python's Unicode meaning."""
    out: list[str] = []
    i, class_start = 0, None  # class_start: where the open class's members begin in ``out``
    while i < len(verbose):
        char = verbose[i]
        if char == "\\":
            escape = verbose[i:i + 2]
            wide = {"\\s": _RE2_SPACE, "\\w": _RE2_WORD}.get(escape)
            out.append(escape if wide is None else wide if class_start is not None else f"[{wide}]")
            i += 2
            continue
        if class_start is not None:
            # "]" first in a class (or after its "^") is a member, not the end.
            first = len(out) == class_start or (len(out) == class_start + 1 and out[class_start] == "^")
            if char == "]" and not first:
                class_start = None
            out.append(char)
        elif char == "#":
            while i < len(verbose) and verbose[i] != "\n":
                i += 1
            continue
        elif not char.isspace():
            out.append(char)
            if char == "[":
                class_start = len(out)
        i += 1
    return "".join(out)


@lru_cache(maxsize=1)
def _badness_re2() -> str:
    from ftfy.badness import BADNESS_RE

    return re2_pattern(BADNESS_RE.pattern)


def look_like_mojibake(texts: list[str]) -> list[bool]:
    """ftfy's ``is_bad`` for every text (True where it would be true), in one RE2 scan of the batch. A batch
    RE2 cannot take (a lone surrogate) is all True; a pattern it cannot read (a later ftfy's) is Python's."""
    import pyarrow as pa
    import pyarrow.compute as pc

    try:
        array = pa.array(texts, type=pa.large_string())
    except (UnicodeEncodeError, pa.ArrowException):
        return [True] * len(texts)
    try:
        return pc.match_substring_regex(array, _badness_re2()).to_pylist()
    except pa.ArrowInvalid:
        from ftfy.badness import is_bad

        return [is_bad(text) for text in texts]


class Cleaner:
    """The recipe's cleaning steps, compiled once."""

    def __init__(self, config: CleaningConfig):
        self.config = config
        self.boilerplate = [re.compile(p, re.IGNORECASE) for p in config.boilerplate]
        self._ftfy = None
        if config.unicode:
            import ftfy

            # HTML and control characters are their own steps (so each is counted and can be turned off).
            full = ftfy.TextFixerConfig(unescape_html=False, remove_control_chars=False)
            self._ftfy = (ftfy.fix_text, full, full._replace(fix_encoding=False))

    def clean(self, text: str) -> tuple[str, int, int]:
        """(cleaned text, bit mask of the steps that changed it, boilerplate lines removed)."""
        return self.clean_batch([text])[0]

    def clean_batch(self, texts: list[str]) -> list[tuple[str, int, int]]:
        """``clean`` of each text; the Unicode repair's mojibake test runs once for the batch."""
        repaired = self.repair_unicode(texts) if self._ftfy is not None else texts
        return [self._clean_rest(new, int(new != text)) for text, new in zip(texts, repaired)]

    def repair_unicode(self, texts: list[str]) -> list[str]:
        """ftfy's ``fix_text`` of each text (see the module text)."""
        fix, full, without_encoding = self._ftfy  # type: ignore[misc]
        out = list(texts)
        # ftfy changes nothing in ASCII text without escape sequences or carriage returns.
        todo = [i for i, text in enumerate(texts) if not (text.isascii() and "\x1b" not in text and "\r" not in text)]
        recheck = []
        for i, bad in zip(todo, look_like_mojibake([texts[i] for i in todo])):
            out[i] = fix(texts[i], full if bad else without_encoding)
            if not bad and out[i] != texts[i]:
                recheck.append(i)
        for i, bad in zip(recheck, look_like_mojibake([out[i] for i in recheck])):
            if bad:
                out[i] = fix(texts[i], full)
        return out

    def _clean_rest(self, text: str, changed: int) -> tuple[str, int, int]:
        """The steps after the Unicode repair (``changed``: its bit), on the repaired text."""
        removed_lines = 0
        for bit, step in enumerate(CLEANING_STEPS):
            if step == "unicode":
                continue
            if step == "boilerplate":
                if not self.boilerplate:
                    continue
                new, removed_lines = self._boilerplate(text)
            elif not getattr(self.config, step):
                continue
            else:
                new = getattr(self, f"_{step}")(text)
            if new != text:
                changed |= 1 << bit
                text = new
        return text, changed, removed_lines

    @staticmethod
    def _html(text: str) -> str:
        if "<" in text:
            text = _SCRIPT_STYLE.sub(" ", text)
            text = _COMMENT.sub(" ", text)
            text = _BLOCK_TAG.sub("\n", text)
            text = _TAG.sub(" ", text)
        if "&" in text:
            for _ in range(2):  # double-escaped entities (&amp;amp;) are common in scraped feeds
                decoded = html.unescape(text)
                if decoded == text:
                    break
                text = decoded
        return text

    def _boilerplate(self, text: str) -> tuple[str, int]:
        lines = text.split("\n")
        kept = [line for line in lines if not any(p.search(line) for p in self.boilerplate)]
        return "\n".join(kept), len(lines) - len(kept)

    @staticmethod
    def _control_characters(text: str) -> str:
        return _CONTROL.sub("", text.replace("\r\n", "\n").replace("\r", "\n").replace("\t", " "))

    @staticmethod
    def _urls(text: str) -> str:
        return _URL.sub(" ", text)

    @staticmethod
    def _punctuation(text: str) -> str:
        text = _DECORATIVE.sub(" ", text)
        text = _REPEATED.sub(lambda m: "..." if m.group(0)[0] == "." else m.group(0)[0], text)
        text = _MIXED.sub(lambda m: m.group(0)[0], text)
        return text if text.isascii() else _STRAY_SYMBOL.sub(" ", text)

    @staticmethod
    def _whitespace(text: str) -> str:
        lines = [_SPACES.sub(" ", line).strip() for line in text.split("\n")]
        return _BLANK_LINES.sub("\n\n", "\n".join(lines)).strip()

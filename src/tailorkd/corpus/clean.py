"""Cleaning one text, step by step, each step configurable (``corpus.cleaning``) and counted.

In order: Unicode repair (ftfy: mojibake such as ``cafÃ©`` -> ``café``, NFC), HTML remnants (script/style
blocks, comments, tags; entities decoded), boilerplate lines (the recipe's regular expressions, matched per
line, case-insensitive), control and invisible characters, URLs (off by default), the paper's special
characters and punctuation noise (runs of repeated punctuation collapsed, decorative runs and stray symbols
removed), whitespace. ``Cleaner.clean`` returns the cleaned text and the steps that changed it, so the
funnel can say what each step did.
"""

from __future__ import annotations

import html
import re

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


class Cleaner:
    """The recipe's cleaning steps, compiled once."""

    def __init__(self, config: CleaningConfig):
        self.config = config
        self.boilerplate = [re.compile(p, re.IGNORECASE) for p in config.boilerplate]
        self._ftfy = None
        if config.unicode:
            import ftfy

            # HTML and control characters are their own steps (so each is counted and can be turned off).
            self._ftfy = (ftfy.fix_text, ftfy.TextFixerConfig(unescape_html=False, remove_control_chars=False))

    def clean(self, text: str) -> tuple[str, int, int]:
        """(cleaned text, bit mask of the steps that changed it, boilerplate lines removed)."""
        changed = 0
        removed_lines = 0
        for bit, step in enumerate(CLEANING_STEPS):
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

    def _unicode(self, text: str) -> str:
        if text.isascii() and "\x1b" not in text and "\r" not in text:
            return text  # ftfy changes nothing here: no mojibake, quotes, widths or line breaks to fix
        fix, config = self._ftfy  # type: ignore[misc]
        return fix(text, config)

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

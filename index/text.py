"""The one sanitiser every text passes before any encoder sees it, and the cache/match key.

Why here and only here: the bundled engine corrupts its heap on text whose normalisation expands it
(U+FDFA expands 18x under NFKC) and fails on lone surrogates. Doing NFKC in Python first, dropping
code points that cannot be UTF-8 encoded and capping the length *after* normalisation makes every
input safe for every backend (see tests/test_sanitize_crash.py).
"""

from __future__ import annotations

import re
import unicodedata

# Past this many characters (after NFKC) text is cut: far beyond any FAQ question, and bounded
# work per request. 512 tokens of the e5 tokenizer is well under 2,000 CJK characters anyway.
MAX_ENCODED_CHARS = 2000

_DROP_CATEGORIES = {"Cc", "Cs", "Co", "Cn"}  # controls, surrogates, private use, unassigned
# Format characters (zero-width, bidi controls) are dropped except the emoji joiners that carry meaning.
_KEEP_FORMAT = {"\u200d", "\ufe0f"}
_SPACES = re.compile(r"\s+")


def sanitize(text: str, max_chars: int = MAX_ENCODED_CHARS) -> str:
    """Return `text` safe for any encoder: NFKC, no unencodable/control/format chars, one space runs, capped."""
    text = unicodedata.normalize("NFKC", text)
    kept = []
    for ch in text:
        if ch in "\t\n\r\v\f":
            kept.append(" ")
            continue
        category = unicodedata.category(ch)
        if category in _DROP_CATEGORIES or (category == "Cf" and ch not in _KEEP_FORMAT):
            continue
        kept.append(ch)
    text = _SPACES.sub(" ", "".join(kept)).strip()
    if len(text) > max_chars:
        text = text[:max_chars]
    # Belt and braces: whatever survived must round-trip through UTF-8.
    return text.encode("utf-8", "ignore").decode("utf-8")


_TRAILING_PUNCT = re.compile(r"[\s?？!！.。,，;；:：~～…、]+$")


def match_key(text: str) -> str:
    """Normalised form for exact-match lookups and caches: NFKC (full-width -> half-width), case, whitespace and trailing punctuation folded."""
    text = sanitize(text).casefold()
    text = _SPACES.sub("", text)
    return _TRAILING_PUNCT.sub("", text)

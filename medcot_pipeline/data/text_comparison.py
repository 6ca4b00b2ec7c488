"""Text as compared for duplicates and contamination: two questions that differ only in case, whitespace,
Unicode form or invisible characters are the same question.

Used by the train/validation split (rows with the same comparison key land on the same side), the duplicate
filter in cleaning, and the n-gram decontamination check. The stored text is never changed by this: only
the key that is compared.
"""

from __future__ import annotations

import re
import unicodedata

# Zero-width and other format characters (Unicode category Cf: ZWSP, ZWJ, BOM, bidi marks ...) and control
# characters other than whitespace carry no words; they are dropped before comparing.
_INVISIBLE_CATEGORIES = frozenset({"Cf", "Cc", "Cs", "Co", "Cn"})
_WHITESPACE = re.compile(r"\s+")
# Words for n-grams: runs of letters and digits (punctuation separates, as in the GPT-3 / OLMo overlap checks).
_WORD = re.compile(r"\w+")


def comparison_key(text: str) -> str:
    """NFKC-normalised, case-folded text without invisible characters, runs of whitespace made one space."""
    folded = unicodedata.normalize("NFKC", text).casefold()
    visible = "".join(ch for ch in folded if ch.isspace() or unicodedata.category(ch) not in _INVISIBLE_CATEGORIES)
    return _WHITESPACE.sub(" ", visible).strip()


def is_invisible(text: str) -> bool:
    """Whether a text holds nothing a reader can see (only whitespace, zero-width or control characters)."""
    return not comparison_key(text)


def words(text: str) -> list[str]:
    """The comparison key's words, in order: what n-grams are made of."""
    return _WORD.findall(comparison_key(text))

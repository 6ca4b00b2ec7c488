"""Read the option a model chose out of its own answer: the multiple-choice parser, and the prompt it answers.

The model answers a benchmark question the way it answers anything (`<think>` reasoning, then `<response>`),
with a generous token budget; the choice is then read from the answer's scored part: the `<response>` body,
or, for a model that does not write the tags (the base model), what follows `</think>`, else the whole
output (`metrics.graded_response`, the same part ROUGE-L scores). The rules, first match wins:

1. **answer statement**: the last "answer is X" / "answer: X" / "correct option is (X)" / "Answer - X" in the
   text, X an option letter or the start of an option's text ("The answer is yes").
2. **leading letter**: the text starts with an option letter set off as a label: "B", "B.", "B)", "(B)",
   "B:", "**B**", or the letter followed by its own option text ("B Folate deficiency"). A leading "A" that
   starts a sentence ("A patient with ...") is not a label.
3. **leading option text**: the text starts with one option's text ("Parvovirus B19 infection is the ...",
   "Yes, because ..."); of options that are prefixes of each other, the longest.
4. **single option named**: exactly one option's text appears anywhere in the text, as whole words.

Otherwise there is no choice: "no readable choice", or "several options named" when rule 4 found more than
one. An answer cut off at its token limit has no choice either ("cut off"), whatever it says so far: it
never finished. Every "no choice" answer counts as wrong, and each reason is counted on its own.
Texts are compared by `text_comparison.comparison_key` (case, Unicode form and spacing do not matter).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from medcot_pipeline.data.text_comparison import comparison_key

# How a choice was read (or why none was): the values of ChoiceReading.rule.
ANSWER_STATEMENT = "answer statement"
LEADING_LETTER = "leading letter"
LEADING_OPTION_TEXT = "leading option text"
SINGLE_OPTION_NAMED = "single option named"
CUT_OFF = "cut off"
NO_READABLE_CHOICE = "no readable choice"
SEVERAL_OPTIONS = "several options named"
NO_CHOICE_RULES = (CUT_OFF, NO_READABLE_CHOICE, SEVERAL_OPTIONS)

# Phrases after which the choice is named: "answer is", "answer:", "correct option would be", "answer is
# likely", "I would choose", "select option" ...
_STATEMENTS = (
    re.compile(
        r"\b(?:answer|option|choice)\s*(?:is|would\s+be|will\s+be|should\s+be|:|=|-|–)\s*"
        r"(?:(?:most\s+)?(?:likely|probably|clearly|definitely)\s*[:,]?\s*)?(?:option\s+|choice\s+)?",
        re.IGNORECASE,
    ),
    re.compile(r"\b(?:choose|select|pick|go\s+with)\s+(?:option\s+|choice\s+)?", re.IGNORECASE),
)
# "Option B is correct", "answer (C) is the most appropriate".
_OPTION_IS_CORRECT = re.compile(
    r"\b(?:option|choice|answer)\s+\(?([A-Z])\)?\s+(?:is|seems|appears)\s+(?:to\s+be\s+)?(?:the\s+)?(?:most\s+)?"
    r"(?:correct|right|best|accurate|appropriate|likely)",
    re.IGNORECASE,
)
_LABEL = re.compile(r"\(?([A-Z])\)?(?=$|[\s.,:;)\]!?*])")
_MARKDOWN = re.compile(r"[*_`#>]+")

INSTRUCTION = "Choose the one best option. End your answer with: The answer is X, where X is the option's letter."


@dataclass(frozen=True)
class ChoiceReading:
    choice: str | None  # the option letter read, or None when there is no choice
    rule: str  # the rule that read it, or why there is none (NO_CHOICE_RULES)


def benchmark_prompt(question: str, options: Mapping[str, str], context: object = None) -> str:
    """The user turn for a benchmark question: its context (PubMedQA's abstract), the question, the lettered
    options, and what to end the answer with."""
    parts = [f"Context: {context.strip()}"] if isinstance(context, str) and context.strip() else []
    parts.append(question.strip())
    parts.append("\n".join(f"{letter}. {text}" for letter, text in options.items()))
    parts.append(INSTRUCTION)
    return "\n\n".join(parts)


def read_choice(scored_text: str, options: Mapping[str, str], *, cut_off: bool = False) -> ChoiceReading:
    """The option the text chooses (rules above); `scored_text` is the answer's scored part."""
    if not options:
        raise ValueError("read_choice needs the question's options")
    if cut_off:
        return ChoiceReading(None, CUT_OFF)
    text = _MARKDOWN.sub("", scored_text).strip()
    keyed = {letter: comparison_key(option) for letter, option in options.items()}

    stated = _last_statement(text, options, keyed)
    if stated is not None:
        return ChoiceReading(stated, ANSWER_STATEMENT)

    label = _leading_label(text, options, keyed)
    if label is not None:
        return ChoiceReading(label, LEADING_LETTER)

    leading = _leading_option_text(comparison_key(text), keyed)
    if leading is not None:
        return ChoiceReading(leading, LEADING_OPTION_TEXT)

    named = [letter for letter, key in keyed.items() if key and _contains_words(comparison_key(text), key)]
    named = _drop_contained(named, keyed)
    if len(named) == 1:
        return ChoiceReading(named[0], SINGLE_OPTION_NAMED)
    return ChoiceReading(None, SEVERAL_OPTIONS if named else NO_READABLE_CHOICE)


def _last_statement(text: str, options: Mapping[str, str], keyed: Mapping[str, str]) -> str | None:
    """The choice of the last answer statement in the text (models often restate their answer at the end)."""
    found: list[tuple[int, str]] = []
    for pattern in _STATEMENTS:
        for statement in pattern.finditer(text):
            choice = _label_or_text_at(text[statement.end() :], options, keyed)
            if choice is not None:
                found.append((statement.start(), choice))
    for statement in _OPTION_IS_CORRECT.finditer(text):
        if statement.group(1) in options:
            found.append((statement.start(), statement.group(1)))
    return max(found)[1] if found else None


def _label_or_text_at(rest: str, options: Mapping[str, str], keyed: Mapping[str, str]) -> str | None:
    """The choice named at the start of `rest` (what follows "the answer is"): a letter, or an option's text."""
    match = _LABEL.match(rest)
    if match and match.group(1) in options:
        return match.group(1)
    return _leading_option_text(comparison_key(rest), keyed)


def _leading_label(text: str, options: Mapping[str, str], keyed: Mapping[str, str]) -> str | None:
    match = _LABEL.match(text)
    if not match or match.group(1) not in options:
        return None
    letter, after = match.group(1), text[match.end() :]
    # A bare capital followed by a space is a label only when its own option text follows ("B Folate ..."),
    # not when it is the article starting a sentence ("A patient with ...").
    bare = not match.group(0).startswith("(") and not match.group(0).endswith(")")
    if bare and after[:1].isspace() and not after.strip().startswith((".", ":", ")")):
        rest = comparison_key(after)
        return letter if keyed[letter] and _starts_with_words(rest, keyed[letter]) else None
    return letter


def _leading_option_text(keyed_text: str, keyed: Mapping[str, str]) -> str | None:
    starts = [letter for letter, key in keyed.items() if key and _starts_with_words(keyed_text, key)]
    if not starts:
        return None
    longest = max(len(keyed[letter]) for letter in starts)
    chosen = [letter for letter in starts if len(keyed[letter]) == longest]
    return chosen[0] if len(chosen) == 1 else None


def _starts_with_words(text: str, words: str) -> bool:
    return text.startswith(words) and (len(text) == len(words) or not text[len(words)].isalnum())


def _contains_words(text: str, words: str) -> bool:
    return re.search(rf"(?<!\w){re.escape(words)}(?!\w)", text) is not None


def _drop_contained(letters: list[str], keyed: Mapping[str, str]) -> list[str]:
    """Options whose text is part of another named option's text ("iron" in "iron deficiency") name nothing of their own."""
    return [
        letter
        for letter in letters
        if not any(other != letter and keyed[letter] != keyed[other] and _contains_words(keyed[other], keyed[letter]) for other in letters)
    ]

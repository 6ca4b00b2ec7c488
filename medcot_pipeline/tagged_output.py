"""Split a model's output into its <think> reasoning and <response> answer, and say what is wrong with its tags."""

from __future__ import annotations

import re
from dataclasses import dataclass
from itertools import pairwise

from medcot_pipeline.chat_format import RESPONSE_CLOSE, RESPONSE_OPEN, THINK_CLOSE, THINK_OPEN

_TAG = re.compile("|".join(re.escape(tag) for tag in (THINK_OPEN, THINK_CLOSE, RESPONSE_OPEN, RESPONSE_CLOSE)))
_EXPECTED = [THINK_OPEN, THINK_CLOSE, RESPONSE_OPEN, RESPONSE_CLOSE]


@dataclass(frozen=True)
class ParsedAnswer:
    """What a tagged output says, best effort even when its tags are broken.

    `think` / `response` are None when their opening tag is absent and "" when the block is empty.
    `compliant` means exactly `<think>…</think><response>…</response>` with nothing but whitespace
    around or between the blocks; it holds exactly when `problems` is empty.
    """

    think: str | None
    response: str | None
    compliant: bool
    response_closed: bool
    problems: tuple[str, ...]


def parse_tagged_output(text: str) -> ParsedAnswer:
    matches = list(_TAG.finditer(text))
    tags = [m.group() for m in matches]
    problems = _tag_problems(text, matches)
    if tags != _EXPECTED and not problems:
        problems.append("tags out of order")
    think = _think_text(text, matches)
    response, closed = _response_text(text, matches)
    return ParsedAnswer(
        think=think,
        response=response,
        compliant=not problems,
        response_closed=closed,
        problems=tuple(dict.fromkeys(problems)),  # keep first-seen order, drop repeats
    )


def _tag_problems(text: str, matches: list[re.Match]) -> list[str]:
    if not matches:
        return ["no tags"]
    problems: list[str] = []
    tags = [m.group() for m in matches]
    for opening, closing in ((THINK_OPEN, THINK_CLOSE), (RESPONSE_OPEN, RESPONSE_CLOSE)):
        depth, blocks = 0, 0
        for tag in tags:
            if tag == opening:
                if depth:
                    problems.append(f"nested {opening}")
                depth += 1
                blocks += 1
            elif tag == closing:
                if depth == 0 and opening in tags:
                    problems.append(f"{closing} without {opening}")
                depth = max(depth - 1, 0)
        if opening not in tags:
            problems.append(f"missing {opening}")
        if closing not in tags:
            problems.append(f"missing {closing}")
        elif depth:
            problems.append(f"unclosed {opening}")
        if blocks > 1 and f"nested {opening}" not in problems:
            problems.append(f"more than one {opening} block")

    if THINK_OPEN in tags and RESPONSE_OPEN in tags:
        if tags.index(RESPONSE_OPEN) < tags.index(THINK_OPEN):
            problems.append(f"{RESPONSE_OPEN} before {THINK_OPEN}")
        elif THINK_CLOSE in tags and tags.index(RESPONSE_OPEN) < tags.index(THINK_CLOSE):
            problems.append(f"{RESPONSE_OPEN} inside the {THINK_OPEN} block")

    if text[: matches[0].start()].strip():
        problems.append(f"text before {tags[0]}")
    for before, after in pairwise(matches):
        if before.group() == THINK_CLOSE and after.group() == RESPONSE_OPEN and text[before.end() : after.start()].strip():
            problems.append(f"text between {THINK_CLOSE} and {RESPONSE_OPEN}")
    if tags[-1] == RESPONSE_CLOSE and text[matches[-1].end() :].strip():
        problems.append(f"text after {RESPONSE_CLOSE}")
    return problems


# Both bodies drop any tags inside them (a nested block's text stays, its tags go).
def _think_text(text: str, matches: list[re.Match]) -> str | None:
    """From the first <think> to the last </think> before the answer starts."""
    first_response = next((m.start() for m in matches if m.group() == RESPONSE_OPEN), len(text))
    opening = next((m for m in matches if m.group() == THINK_OPEN and m.start() < first_response), None)
    if opening is None:
        return None
    closes = [m.start() for m in matches if m.group() == THINK_CLOSE and opening.end() <= m.start() < first_response]
    end = closes[-1] if closes else first_response
    return _TAG.sub("", text[opening.end() : end]).strip()


def _response_text(text: str, matches: list[re.Match]) -> tuple[str | None, bool]:
    """From the first <response> to the first </response> after it, or to the end when it never closes."""
    opening = next((m for m in matches if m.group() == RESPONSE_OPEN), None)
    if opening is None:
        return None, False
    closing = next((m for m in matches if m.group() == RESPONSE_CLOSE and m.start() >= opening.end()), None)
    end = closing.start() if closing else len(text)
    return _TAG.sub("", text[opening.end() : end]).strip(), closing is not None

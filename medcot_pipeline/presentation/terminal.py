"""An answer on a terminal: the reasoning and the response as two labelled sections instead of one raw line of
tags, written as the tokens stream in. A tag that comes out of order (a second `<think>`, a `<response>` before
the reasoning closed) is shown as written and marked, so a malformed answer looks malformed.

Standard library only: `medcot --help` must not wait for anything heavier.
"""

from __future__ import annotations

import os
from typing import TextIO

THINK_OPEN, THINK_CLOSE, RESPONSE_OPEN, RESPONSE_CLOSE = "<think>", "</think>", "<response>", "</response>"
_TAGS = (THINK_OPEN, THINK_CLOSE, RESPONSE_OPEN, RESPONSE_CLOSE)
_EXPECTED = {None: THINK_OPEN, THINK_OPEN: THINK_CLOSE, THINK_CLOSE: RESPONSE_OPEN, RESPONSE_OPEN: RESPONSE_CLOSE}
# ANSI styles: faint for reasoning, bold for the answer, reverse video for a tag out of order.
FAINT, BOLD, REVERSE, RESET = "\x1b[2m", "\x1b[1m", "\x1b[7m", "\x1b[0m"


def wants_color(stream: TextIO) -> bool:
    """Colour on a terminal, unless NO_COLOR is set (no-color.org) or the terminal is dumb."""
    return stream.isatty() and "NO_COLOR" not in os.environ and os.environ.get("TERM") != "dumb"


class TaggedAnswerWriter:
    """Writes `<think>…</think><response>…</response>` text, fed in chunks, as

    Reasoning
    the reasoning, step by step (faint)

    Answer
    the final answer (bold)
    """

    def __init__(self, stream: TextIO, color: bool | None = None):
        self.stream = stream
        self.color = wants_color(stream) if color is None else color
        self.last_tag: str | None = None  # the last tag that came in order
        self.pending = ""  # text that may be the start of a tag split across chunks
        self.at_line_start = True
        self.stream_is_empty = True  # nothing written yet: the first section needs no blank line above it
        self.active = ""  # the ANSI style in effect

    def _style(self, code: str, text: str) -> str:
        return f"{code}{text}{RESET}" if self.color and text else text

    def _set_style(self, code: str) -> None:
        """Switch the terminal's style once per section, not once per chunk of streamed text."""
        if self.color and code != self.active:
            self.stream.write((RESET if self.active else "") + code)
            self.active = code

    def _write(self, text: str) -> None:
        if not text:
            return
        if self.at_line_start and self.last_tag in (THINK_OPEN, RESPONSE_OPEN):
            text = text.lstrip()
            if not text:
                return
        self._set_style(FAINT if self.last_tag == THINK_OPEN else BOLD if self.last_tag == RESPONSE_OPEN else "")
        self.stream.write(text)
        self.at_line_start = text.endswith("\n")

    def _section(self, title: str) -> None:
        self._set_style("")
        lead = "" if self.stream_is_empty else ("\n" if self.at_line_start else "\n\n")
        self.stream.write(f"{lead}{self._style(BOLD, title)}\n")
        self.at_line_start = True

    def _tag(self, tag: str) -> None:
        if _EXPECTED.get(self.last_tag) == tag:
            if tag == THINK_OPEN:
                self._section("Reasoning")
            elif tag == RESPONSE_OPEN:
                self._section("Answer")
            self.last_tag = tag
        else:
            # Out of order: shown as written, marked, so the reader sees the answer is malformed.
            self._set_style("")
            self.stream.write(self._style(REVERSE, tag) if self.color else f"[{tag}]")
            self.at_line_start = False
        self.stream_is_empty = False

    def feed(self, text: str) -> None:
        text = self.pending + text
        self.pending = ""
        while text:
            start = text.find("<")
            if start < 0:
                self._emit(text)
                break
            self._emit(text[:start])
            text = text[start:]
            tag = next((t for t in _TAGS if text.startswith(t)), None)
            if tag is not None:
                self._tag(tag)
                text = text[len(tag) :]
            elif any(t.startswith(text) for t in _TAGS):
                self.pending = text  # "<respo": wait for the next chunk
                break
            else:
                self._emit("<")
                text = text[1:]
        self.stream.flush()

    def _emit(self, text: str) -> None:
        if text:
            self._write(text)
            self.stream_is_empty = False

    def finish(self) -> None:
        """Flush what was held back and end the line."""
        if self.pending:
            self._emit(self.pending)
            self.pending = ""
        self._set_style("")
        if not self.at_line_start or self.stream_is_empty:
            self.stream.write("\n")
        self.at_line_start = True
        self.stream.flush()

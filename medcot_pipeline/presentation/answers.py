"""The answers rouge_report graded, as a reader checks them: every question, each model's answer with its
reasoning set apart from its response, and what is wrong with it said out loud (malformed tags, a loop, a cut).

A malformed answer is shown as written, tags and all: its "response" is whatever a best-effort parse found,
and showing only that would make `<think><think>…` look clean.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from medcot_pipeline.presentation.entries import Markdown, Table
from medcot_pipeline.presentation.text import escape_markdown, score_text, shorten, table_cell

MODELS = (("base", "base model"), ("fine_tuned", "fine-tuned"))
# The side-by-side view holds every question up to this many; beyond it, the page says how many are left out.
SIDE_BY_SIDE_LIMIT = 100
# A loop: one run of this many words (tags count as words) occurring this often, covering this share of the answer.
LOOP_NGRAM, LOOP_REPEATS, LOOP_SHARE = 6, 3, 0.25
_WORDS = re.compile(r"</?[a-z]+>|[^\s<]+|<")


def read_samples(samples_path: Path) -> dict[int, dict[str, dict]]:
    """samples.jsonl grouped by question: {question index: {model label: sample}}."""
    by_question: dict[int, dict[str, dict]] = {}
    seen: dict[str, int] = {}
    with open(samples_path, encoding="utf-8") as handle:
        for line in handle:
            sample = json.loads(line)
            label = sample.get("model", "")
            # Older files have no index; the lines of each model are in question order.
            index = sample.get("index", seen.get(label, 0))
            seen[label] = index + 1
            by_question.setdefault(index, {})[label] = sample
    return dict(sorted(by_question.items()))


def is_looping(text: str | None) -> bool:
    """Whether an answer repeats itself: one run of words (or tags, `<response><response>…`) over and over."""
    words = _WORDS.findall(text or "")
    if len(words) < LOOP_NGRAM * LOOP_REPEATS:
        return False
    runs = Counter(tuple(words[i : i + LOOP_NGRAM]) for i in range(len(words) - LOOP_NGRAM + 1))
    _, repeats = runs.most_common(1)[0]
    return repeats >= LOOP_REPEATS and repeats * LOOP_NGRAM >= LOOP_SHARE * len(words)


@dataclass(frozen=True)
class AnswerFlags:
    malformed: tuple[str, ...]  # what is wrong with the tags; empty for a well-formed answer
    looping: bool
    cut_off_at: int | None  # new tokens when the answer hit the limit before </response>
    question_shortened: bool

    @property
    def problems(self) -> list[str]:
        notes = []
        if self.malformed:
            notes.append("no <think>/<response> tags" if self.malformed == ("no tags",) else f"malformed: {', '.join(self.malformed)}")
        if self.looping:
            notes.append("looping")
        if self.cut_off_at is not None:
            notes.append(f"cut off at {self.cut_off_at} tokens")
        if self.question_shortened:
            notes.append("question shortened to fit")
        return notes

    def text(self) -> str:
        return "; ".join(self.problems) or "well-formed"


def answer_flags(sample: dict) -> AnswerFlags:
    compliant = bool(sample.get("compliant"))
    return AnswerFlags(
        malformed=() if compliant else tuple(sample.get("problems") or ["not in the <think>/<response> format"]),
        looping=is_looping(sample.get("output")),
        cut_off_at=sample.get("new_tokens") if sample.get("truncated") else None,
        question_shortened=bool(sample.get("prompt_truncated")),
    )


def _graded_text(sample: dict) -> str:
    """What a reader should see first: the response of a well-formed answer, the whole output of any other."""
    text = sample.get("response") if sample.get("compliant") else sample.get("output")
    text = text if text is not None else sample.get("scored_response") or sample.get("output") or ""
    return text if text.strip() else "(empty answer)"


def answers_table(samples_path: Path, width: int = 300) -> Table:
    """Every question as rows that sit together (question, reference, each model's answer), in plain text, so
    tags show as written; each answer row says its score and what is wrong with it. A well-formed answer shows
    its response (its reasoning is in `answers_side_by_side`); any other shows its output as written."""
    records = []
    for index, models in read_samples(samples_path).items():
        any_sample = next(iter(models.values()))
        rows = [("question", any_sample.get("question")), ("reference", any_sample.get("reference"))]
        for label, title in MODELS:
            if label in models:
                sample = models[label]
                rows.append(
                    (f"{title}: ROUGE-L {score_text(sample.get('rouge_l_response'))}; {answer_flags(sample).text()}", _graded_text(sample))
                )
        records += [{"#": index + 1, "from": who, "text": shorten(text, width)} for who, text in rows]
    return Table(
        columns=(("#", "int"), ("from", "string"), ("text", "string")),
        records=records,
        descriptions={"#": "question number", "from": "the question, the dataset's answer, or a model's answer with its score and flags"},
    )


def _answer_cell(sample: dict | None) -> str:
    """One model's answer in a markdown table cell: its flags, then the response in bold and the reasoning after
    it, or, for a malformed answer, the output as written (tags visible)."""
    if sample is None:
        return "_(not run)_"
    flags = answer_flags(sample)
    head = f"**⚠ {table_cell(flags.text())}** · " if flags.problems else "✓ well-formed · "
    if sample.get("compliant"):
        reasoning = (sample.get("think") or "").strip()
        body = f"**{table_cell(sample.get('response') or '(empty response)')}**"
        if reasoning:
            body += f" · _reasoning:_ {table_cell(reasoning)}"
    else:
        output = sample.get("output") or ""
        body = f"_as written:_ {table_cell(output)}" if output.strip() else "_(empty answer)_"
    return head + body


def answers_side_by_side(samples_path: Path, limit: int = SIDE_BY_SIDE_LIMIT) -> Markdown:
    """Every question (up to `limit`, saying so when there are more) with the reference, base and fine-tuned
    answers in three columns, whole: flags first, the response in bold, the reasoning after it."""
    questions = read_samples(samples_path)
    parts = []
    if len(questions) > limit:
        parts.append(f"_The first {limit} of {len(questions)} questions; every answer is in samples.jsonl._")
    for index, models in list(questions.items())[:limit]:
        any_sample = next(iter(models.values()))
        headers, cells = ["Reference"], [table_cell(any_sample.get("reference") or "(empty)")]
        for label, title in MODELS:
            if label in models:
                headers.append(f"{title[0].upper()}{title[1:]}, ROUGE-L {score_text(models[label].get('rouge_l_response'))}")
                cells.append(_answer_cell(models[label]))
        parts += [
            f"### Question {index + 1} of {len(questions)}",
            paragraphs(any_sample.get("question")),
            "| " + " | ".join(table_cell(h) for h in headers) + " |\n|" + "---|" * len(headers) + "\n| " + " | ".join(cells) + " |",
        ]
    return Markdown("\n\n".join(parts))


def paragraphs(text: str | None) -> str:
    """Text as markdown paragraphs with its line breaks kept and its tags visible."""
    if not text or not str(text).strip():
        return "_(empty)_"
    return "  \n".join(escape_markdown(line) for line in str(text).strip().splitlines())


def best_and_worst(samples_path: Path, label: str = "fine_tuned") -> tuple[dict | None, dict | None]:
    """The model's best answer (well-formed first, then the highest ROUGE-L) and its worst (malformed, looping or
    cut off first, then the lowest ROUGE-L); the same answer when there is only one."""
    answers = [models[label] for models in read_samples(samples_path).values() if label in models]
    if not answers:
        return None, None

    def quality(sample):
        flags = answer_flags(sample)
        return (not flags.malformed, not flags.looping, flags.cut_off_at is None, sample.get("rouge_l_response") or 0.0)

    return max(answers, key=quality), min(answers, key=quality)


def answer_card(sample: dict, title: str, total: int) -> Markdown:
    """One answer, short enough to show inline on a page (under 1,000 characters): the question, what the model
    answered (the response in bold, or the output as written when malformed) and the reference."""
    flags = answer_flags(sample)
    answer = (
        f"**{escape_markdown(shorten(sample.get('response'), 280))}**"
        if sample.get("compliant")
        else f"_as written:_ {escape_markdown(shorten(sample.get('output'), 280))}"
    )
    text = "\n\n".join(
        [
            f"**{title}**: question {sample.get('index', 0) + 1} of {total}, ROUGE-L {score_text(sample.get('rouge_l_response'))}, "
            f"{escape_markdown(flags.text())}",
            f"Q: {escape_markdown(shorten(sample.get('question'), 180))}",
            f"A: {answer}",
            f"Reference: {escape_markdown(shorten(sample.get('reference'), 200))}",
        ]
    )
    return Markdown(text)

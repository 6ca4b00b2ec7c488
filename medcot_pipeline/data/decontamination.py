"""Training records that hold text of a held-out or benchmark question, found by word n-gram overlap.

The test of the GPT-3 paper (Brown et al. 2020, appendix C) and OLMo's decontamination: a training record is
contaminated by a reference text (a held-out record, a benchmark question) when they share a run of 13
words. Texts are compared by their comparison keys (`text_comparison`: case, Unicode form, spacing and
invisible characters do not matter), split into words at punctuation. Three refinements keep it from
flagging what is not a copy:

- A reference shorter than 13 words is matched as a whole (all its words in a row), as GPT-3 does for short
  examples; one shorter than `MIN_WORDS` only by its whole comparison key against a training question.
- A 13-word run found in more than `BOILERPLATE_DOCUMENTS` reference texts is phrasing the benchmark uses
  everywhere ("which of the following is the most likely cause of this patient s symptoms"), not a copy of
  any one question: it is not counted.
- N-grams never span two fields of a training record (question, reasoning, response).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from medcot_pipeline.data.text_comparison import comparison_key, words

NGRAM_WORDS = 13
MIN_WORDS = 8
BOILERPLATE_DOCUMENTS = 10


@dataclass
class OverlapIndex:
    """The n-grams of every reference text, by the reference set (source) they come from."""

    n: int = NGRAM_WORDS
    min_words: int = MIN_WORDS
    boilerplate_documents: int = BOILERPLATE_DOCUMENTS
    grams: dict[tuple[str, ...], set[str]] = field(default_factory=dict)  # n-gram or whole short text -> sources
    short_lengths: set[int] = field(default_factory=set)  # word counts of the short texts matched as a whole
    exact: dict[str, set[str]] = field(default_factory=dict)  # comparison key of a very short text -> sources
    references: dict[str, int] = field(default_factory=dict)  # source -> reference texts indexed
    boilerplate: int = 0  # n-grams left out as boilerplate

    @classmethod
    def build(cls, references: Mapping[str, Sequence[str]], **limits) -> OverlapIndex:
        index = cls(**limits)
        documents: dict[tuple[str, ...], int] = defaultdict(int)
        sources: dict[tuple[str, ...], set[str]] = defaultdict(set)
        for source, texts in references.items():
            index.references[source] = len(texts)
            for text in texts:
                tokens = words(text)
                if len(tokens) >= index.n:
                    grams = {tuple(tokens[i : i + index.n]) for i in range(len(tokens) - index.n + 1)}
                elif len(tokens) >= index.min_words:
                    grams = {tuple(tokens)}
                    index.short_lengths.add(len(tokens))
                else:
                    if tokens:
                        index.exact.setdefault(comparison_key(text), set()).add(source)
                    continue
                for gram in grams:
                    documents[gram] += 1
                    sources[gram].add(source)
        for gram, count in documents.items():
            if count > index.boilerplate_documents:
                index.boilerplate += 1
            else:
                index.grams[gram] = sources[gram]
        return index

    def sources_in(self, fields: Sequence[str]) -> set[str]:
        """The reference sets whose text appears in these fields of one training record."""
        found: set[str] = set()
        for text in fields:
            if not isinstance(text, str) or not text:
                continue
            found |= self.exact.get(comparison_key(text), set())
            tokens = words(text)
            for length in (self.n, *self.short_lengths):
                for i in range(len(tokens) - length + 1):
                    hit = self.grams.get(tuple(tokens[i : i + length]))
                    if hit:
                        found |= hit
        return found


@dataclass(frozen=True)
class Decontamination:
    """What removing contaminated training records did: counts by source, and the rows removed."""

    kept_positions: list[int]
    removed_by_source: dict[str, int]  # a record overlapping two sources counts under both
    removed_rows: int
    references: dict[str, int]
    boilerplate_ngrams: int


def contaminated_sources(records: Sequence[Sequence[str]], index: OverlapIndex) -> list[set[str]]:
    """For each training record (its text fields), the reference sets it overlaps."""
    return [index.sources_in(fields) for fields in records]


def decontaminate(records: Sequence[Sequence[str]], references: Mapping[str, Sequence[str]], **limits) -> Decontamination:
    """Which training records to keep: those that share no counted n-gram with any reference text."""
    index = OverlapIndex.build(references, **limits)
    hits = contaminated_sources(records, index)
    removed = {source: 0 for source in references}
    for sources in hits:
        for source in sources:
            removed[source] += 1
    return Decontamination(
        kept_positions=[i for i, sources in enumerate(hits) if not sources],
        removed_by_source=removed,
        removed_rows=sum(1 for sources in hits if sources),
        references=dict(index.references),
        boilerplate_ngrams=index.boilerplate,
    )


def split_references(validation, benchmark_questions) -> dict[str, list[str]]:
    """What training records are checked against: each held-out record (question and answer) and each benchmark's
    questions (`benchmark:<name>`), from the validation split and benchmark_questions' table."""
    references = {"validation": [f"{q}\n{r}" for q, r in zip(validation["question"], validation["response"])]}
    for name, group in benchmark_questions.groupby("benchmark", sort=False):
        references[f"benchmark:{name}"] = group["question"].tolist()
    return references


def training_fields(train) -> list[list[str]]:
    """The text fields of each training record, as `decontaminate` reads them."""
    return train[["question", "reasoning", "response"]].values.tolist()

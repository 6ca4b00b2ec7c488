"""Data stage: the raw records as loaded, and the formatted train/validation splits."""

import dagster as dg
import pandas as pd

from medcot_pipeline.artifact_store import ArtifactError
from medcot_pipeline.contracts import BenchmarkQuestions, BenchmarkSource, DatasetProvenance, DecontaminationSummary, SplitsSummary
from medcot_pipeline.data import benchmarks, cleaning, decontamination, raw_parquet, sources, splits, token_budget
from medcot_pipeline.data.schema import RAW_COLUMNS, DatasetError, SourceUnreachableError
from medcot_pipeline.defs.metadata import benchmark_sources_table, records_preview, summary_table
from medcot_pipeline.defs.resources import ArtifactStore, BaseModelResource, HubResource
from medcot_pipeline.defs.stages import (
    PROFILE,
    BenchmarkQuestionsConfig,
    FormattingConfig,
    RawDatasetConfig,
    current_code_version,
    stage_asset,
)

# Only a source that could not be reached is retried (allow_retries below); bad data fails the same way every time.
NETWORK_RETRY = dg.RetryPolicy(max_retries=2, delay=10, backoff=dg.Backoff.EXPONENTIAL)
HUB_DATASET = PROFILE.stages.raw_dataset.hub_dataset


@dg.observable_source_asset(
    name="medical_o1_hub_dataset",
    group_name="data",
    description=f"{HUB_DATASET} on the Hugging Face Hub; observing it records its current commit.",
)
def medical_o1_hub_dataset(hub: HubResource) -> dg.ObserveResult:
    """The dataset on the Hub, observed by its commit: each new commit is a new data version upstream."""
    try:
        revision = hub.dataset_revision(HUB_DATASET)
    except Exception as err:  # noqa: BLE001 - offline, auth or a missing repo all mean "cannot observe now"
        raise dg.Failure(f"cannot read the current commit of {HUB_DATASET} from the Hub: {type(err).__name__}: {err}") from err
    return dg.ObserveResult(data_version=dg.DataVersion(revision), metadata={"revision": revision, "dataset": HUB_DATASET})


def source_is_network(config) -> bool:
    return config.source == "hub"


@stage_asset(
    kinds={"huggingface", "parquet"},
    # Linked only where the profile reads the Hub: a new upstream commit then marks raw_dataset stale.
    deps=[medical_o1_hub_dataset] if source_is_network(PROFILE.stages.raw_dataset) else None,
    retry_policy=NETWORK_RETRY,
)
def raw_dataset(context: dg.AssetExecutionContext, config: RawDatasetConfig, artifacts: ArtifactStore) -> dg.Output[str]:
    """Medical-o1 records as loaded (Hub, file or the bundled sample), stored as Parquet."""
    try:
        records, provenance = sources.load_records(config)
        provenance = provenance.model_copy(update={"code_version": current_code_version(context)})
        with artifacts.new_version("raw_dataset", context.run_id) as staging:
            raw_parquet.write_raw_parquet(records, staging / raw_parquet.RECORDS_FILE)
            provenance.write(staging)
    except DatasetError as err:
        # The message names the file and what is wrong with it; a retry only helps a source that was unreachable.
        raise dg.Failure(str(err), allow_retries=isinstance(err, SourceUnreachableError)) from None
    except ArtifactError as err:  # e.g. an artifacts root that is a file: the same on every retry
        raise dg.Failure(str(err), allow_retries=False) from None
    content_hash = provenance.content_sha256
    out_dir = artifacts.version_dir("raw_dataset", context.run_id)
    return dg.Output(
        str(out_dir),
        data_version=dg.DataVersion(content_hash[:16]),
        metadata={
            "path": dg.MetadataValue.path(str(out_dir)),
            "source": provenance.source,
            "location": provenance.location,
            "revision": provenance.revision or "n/a",
            "format": provenance.format,
            "dagster/row_count": len(records),
            "columns": ", ".join(map(str, records.columns)),
            "content_sha256": content_hash,
            "preview": records_preview(records, list(RAW_COLUMNS)),
        },
    )


@stage_asset(kinds={"huggingface", "parquet"}, retry_policy=NETWORK_RETRY)
def benchmark_questions(context: dg.AssetExecutionContext, config: BenchmarkQuestionsConfig, artifacts: ArtifactStore) -> dg.Output[str]:
    """The test questions of MedQA, MedMCQA and PubMedQA (each at a recorded commit), or offline the sample written
    for this project that stands in for them. benchmark_report answers them; formatted_splits keeps them out of training."""
    revisions = {"medqa": config.medqa_revision, "medmcqa": config.medmcqa_revision, "pubmedqa": config.pubmedqa_revision}
    try:
        loaded = benchmarks.load_benchmarks(config.source, config.benchmarks, revisions)
    except DatasetError as err:
        raise dg.Failure(str(err), allow_retries=isinstance(err, SourceUnreachableError)) from None
    questions = pd.concat([benchmark.rows for benchmark in loaded], ignore_index=True)
    content_hash = raw_parquet.frame_sha256(questions)
    summary = BenchmarkQuestions(
        settings=config,
        sources=[
            BenchmarkSource(
                name=b.name,
                title=b.title,
                questions=len(b.rows),
                skipped=b.skipped,
                location=b.location,
                revision=b.revision,
                commit=b.commit,
                stand_in=b.stand_in,
            )
            for b in loaded
        ],
        content_sha256=content_hash,
        code_version=current_code_version(context),
    )
    with artifacts.new_version("benchmark_questions", context.run_id) as staging:
        questions.to_parquet(staging / benchmarks.QUESTIONS_FILE, index=False)
        summary.write(staging)
    out_dir = artifacts.version_dir("benchmark_questions", context.run_id)
    if summary.stand_in:
        context.log.warning(f"benchmark_questions holds the stand-in sample, not a benchmark: {benchmarks.SAMPLE_TITLE}")
    return dg.Output(
        str(out_dir),
        data_version=dg.DataVersion(content_hash[:16]),
        metadata={
            "path": dg.MetadataValue.path(str(out_dir)),
            "dagster/row_count": len(questions),
            "benchmarks": benchmark_sources_table(summary.sources),
            "content_sha256": content_hash,
            "preview": records_preview(questions, ["benchmark", "question", "options", "answer_idx"]),
        },
    )


@stage_asset(kinds={"pandas", "parquet"})
def formatted_splits(
    context: dg.AssetExecutionContext,
    config: FormattingConfig,
    raw_dataset: str,
    benchmark_questions: str,
    artifacts: ArtifactStore,
    base_model: BaseModelResource,
) -> dg.Output[str]:
    """Cleaned records as chat pairs with `<think>…</think><response>…</response>` targets, split into train and validation."""
    records = raw_parquet.read_raw_parquet(raw_parquet.records_path(raw_dataset))
    dataset = DatasetProvenance.read(raw_dataset)
    # The tokenizer that measures the records also says which strings it would read as control tokens.
    tokenizer = base_model.tokenizer(artifacts)
    try:
        cleaned, cleaning_counts = cleaning.clean_records(records, cleaning.special_token_strings(tokenizer))
    except DatasetError as err:
        raise dg.Failure(f"{raw_dataset}: {err}") from err
    formatted = splits.format_records(cleaned)

    lengths = token_budget.record_token_lengths(tokenizer, formatted)
    stats = token_budget.length_stats(lengths)
    kept, over_limit = token_budget.apply_overlength_policy(formatted, lengths, base_model.max_seq_length, config.overlength_policy)
    if kept.empty:
        raise dg.Failure(
            f"no record fits max_seq_length={base_model.max_seq_length}: {over_limit} of {len(formatted)} are longer "
            "(raise max_seq_length or set overlength_policy: truncate)"
        )
    try:
        train, validation, split_info = splits.split_train_validation(kept, config.validation_size, config.seed)
    except DatasetError as err:
        raise dg.Failure(str(err)) from err

    # Training records that hold text of a held-out record or a benchmark question are left out (13-word overlap).
    references = decontamination.split_references(validation, benchmarks.read_questions(benchmark_questions))
    removal = decontamination.decontaminate(decontamination.training_fields(train), references)
    train = train.iloc[removal.kept_positions].reset_index(drop=True)
    if train.empty:
        raise dg.Failure(
            f"every training record overlaps a held-out or benchmark question ({removal.removed_by_source}); nothing is left to train on"
        )
    decontaminated = DecontaminationSummary(
        ngram_words=decontamination.NGRAM_WORDS,
        min_words=decontamination.MIN_WORDS,
        boilerplate_documents=decontamination.BOILERPLATE_DOCUMENTS,
        references=removal.references,
        removed_by_source=removal.removed_by_source,
        removed_rows=removal.removed_rows,
        boilerplate_ngrams=removal.boilerplate_ngrams,
    )
    if removal.removed_rows:
        context.log.info(
            f"left {removal.removed_rows} training record(s) out for overlapping held-out or benchmark text: {removal.removed_by_source}"
        )

    content_hash = raw_parquet.frame_sha256(pd.concat([train.assign(_split="train"), validation.assign(_split="validation")]))
    dropped = cleaning_counts["input_rows"] - cleaning_counts["output_rows"] + (over_limit if config.overlength_policy == "drop" else 0)
    summary = SplitsSummary(
        dataset=dataset,
        settings=config,
        tokenizer=base_model.name,
        max_seq_length=base_model.max_seq_length,
        cleaning=cleaning_counts,
        token_lengths=stats,
        over_max_seq_length=over_limit,
        split=split_info,
        input_rows=len(records),
        train_rows=len(train),
        validation_rows=len(validation),
        dropped_rows=dropped,
        dropped_share=round(dropped / max(len(records), 1), 4),
        decontamination=decontaminated,
        benchmark_questions_code_version=BenchmarkQuestions.read(benchmark_questions).code_version,
        content_sha256=content_hash,
        code_version=current_code_version(context),
    )
    with artifacts.new_version("formatted_splits", context.run_id) as staging:
        train.to_parquet(staging / "train.parquet", index=False)
        validation.to_parquet(staging / "validation.parquet", index=False)
        summary.write(staging)
    out_dir = artifacts.version_dir("formatted_splits", context.run_id)
    return dg.Output(
        str(out_dir),
        data_version=dg.DataVersion(content_hash[:16]),
        metadata={
            "path": dg.MetadataValue.path(str(out_dir)),
            # The numbers worth a chart across runs (the Plots tab draws every numeric entry); the rest as tables.
            "train_rows": len(train),
            "validation_rows": len(validation),
            "dropped_share": summary.dropped_share,
            "rows": summary_table(
                {
                    "input rows": len(records),
                    "after cleaning": cleaning_counts["output_rows"],
                    f"over max_seq_length ({base_model.max_seq_length} tokens)": f"{over_limit} ({config.overlength_policy})",
                    "dropped rows": dropped,
                    "train rows": len(train),
                    "validation rows": f"{len(validation)} of {config.validation_size} requested",
                    "validation note": split_info["validation_size_reason"],
                    "left out of train (overlap with held-out or benchmark text)": removal.removed_rows,
                }
            ),
            "decontamination": dg.MetadataValue.json(decontaminated.model_dump()),
            "token_lengths": summary_table(
                {
                    "tokenizer": base_model.name,
                    "median": stats.get("median"),
                    "p90": stats.get("p90"),
                    "p99": stats.get("p99"),
                    "max": stats.get("max"),
                    "max_seq_length": base_model.max_seq_length,
                }
            ),
            "cleaning_counts": dg.MetadataValue.json(cleaning_counts),
            "content_sha256": content_hash,
            "preview": records_preview(train, ["question", "target"]),
        },
    )

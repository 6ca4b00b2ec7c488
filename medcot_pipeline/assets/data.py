"""Data stage: the raw records as loaded, and the formatted train/validation splits."""

import json
from pathlib import Path

import dagster as dg
import pandas as pd

from medcot_pipeline import dataset_sources, raw_parquet, record_cleaning, splits, token_budget
from medcot_pipeline.profiles import Profile, code_version
from medcot_pipeline.resources import ArtifactStore, BaseModelResource

DATA_GROUP = "data"
# Sources that reach the network get retried; a schema error is not retried (it fails the same way).
NETWORK_RETRY = dg.RetryPolicy(max_retries=2, delay=10, backoff=dg.Backoff.EXPONENTIAL)


def _preview(df: pd.DataFrame, columns: list[str], rows: int = 3, width: int = 120) -> str:
    shown = df[columns].head(rows).copy()
    for column in columns:
        shown[column] = shown[column].astype(str).str.slice(0, width).str.replace("\n", " ", regex=False).str.replace("|", "/", regex=False)
    return shown.to_markdown(index=False)


def build_data_assets(profile: Profile) -> list[dg.AssetsDefinition]:
    RawDatasetConfig = profile.config_class("raw_dataset")
    FormattingConfig = profile.config_class("formatted_splits")

    def raw_dataset(context: dg.AssetExecutionContext, config: RawDatasetConfig, artifacts: ArtifactStore) -> dg.Output[str]:
        """Medical-o1 records as loaded (Hub, file or the bundled sample), stored as Parquet."""
        try:
            records, source = dataset_sources.load_records(config)
        except dataset_sources.DatasetError as err:
            raise dg.Failure(str(err), allow_retries=source_is_network(config)) from err
        with artifacts.new_version("raw_dataset", context.run_id) as staging:
            raw_parquet.write_raw_parquet(records, staging / "records.parquet")
            (staging / "source.json").write_text(json.dumps(source, indent=2))
        path = artifacts.path("raw_dataset", context.run_id, "records.parquet")
        content_hash = raw_parquet.frame_sha256(records)
        return dg.Output(
            str(path),
            data_version=dg.DataVersion(content_hash[:16]),
            metadata={
                "source": source["source"],
                "location": source.get("location") or "",
                "revision": source.get("revision") or "n/a",
                "format": source.get("format") or "",
                "dagster/row_count": len(records),
                "columns": ", ".join(map(str, records.columns)),
                "content_sha256": content_hash,
                "path": dg.MetadataValue.path(str(path)),
                "preview": dg.MetadataValue.md(_preview(records, list(dataset_sources.REQUIRED_COLUMNS))),
            },
        )

    def formatted_splits(
        context: dg.AssetExecutionContext,
        config: FormattingConfig,
        raw_dataset: str,
        artifacts: ArtifactStore,
        base_model: BaseModelResource,
    ) -> dg.Output[str]:
        """Cleaned records as chat pairs with <think>/<response> targets, split into train and validation."""
        records = raw_parquet.read_raw_parquet(raw_dataset)
        try:
            cleaned, cleaning_counts = record_cleaning.clean_records(records)
        except dataset_sources.DatasetError as err:
            raise dg.Failure(f"{raw_dataset}: {err}") from err
        formatted = splits.format_records(cleaned)

        tokenizer = base_model.tokenizer(artifacts)
        lengths = token_budget.record_token_lengths(tokenizer, formatted)
        stats = token_budget.length_stats(lengths)
        kept, over_limit = token_budget.apply_overlength_policy(
            formatted, lengths, base_model.max_seq_length, config.overlength_policy
        )
        if kept.empty:
            raise dg.Failure(
                f"no record fits max_seq_length={base_model.max_seq_length}: {over_limit} of {len(formatted)} are longer "
                "(raise max_seq_length or set overlength_policy: truncate)"
            )
        try:
            train, validation, split_info = splits.split_train_validation(kept, config.validation_size, config.seed)
        except dataset_sources.DatasetError as err:
            raise dg.Failure(str(err)) from err

        summary = {
            "cleaning": cleaning_counts,
            "token_lengths": stats,
            "max_seq_length": base_model.max_seq_length,
            "overlength_policy": config.overlength_policy,
            "over_max_seq_length": over_limit,
            "split": split_info,
        }
        with artifacts.new_version("formatted_splits", context.run_id) as staging:
            train.to_parquet(staging / "train.parquet", index=False)
            validation.to_parquet(staging / "validation.parquet", index=False)
            (staging / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
        out_dir = artifacts.path("formatted_splits", context.run_id)
        content_hash = raw_parquet.frame_sha256(pd.concat([train.assign(_split="train"), validation.assign(_split="validation")]))

        dropped = cleaning_counts.get("input_rows", len(records)) - cleaning_counts.get("output_rows", len(cleaned))
        if config.overlength_policy == "drop":
            dropped += over_limit
        return dg.Output(
            str(out_dir),
            data_version=dg.DataVersion(content_hash[:16]),
            metadata={
                "path": dg.MetadataValue.path(str(out_dir)),
                "train_rows": len(train),
                "validation_rows": len(validation),
                "validation_requested": config.validation_size,
                "validation_size_note": split_info["validation_size_reason"],
                "input_rows": len(records),
                "dropped_rows": dropped,
                "dropped_share": round(dropped / max(len(records), 1), 4),
                "cleaning_counts": dg.MetadataValue.json(cleaning_counts),
                "tokenizer": base_model.name,
                "token_length_median": stats.get("median"),
                "token_length_p90": stats.get("p90"),
                "token_length_p99": stats.get("p99"),
                "token_length_max": stats.get("max"),
                "max_seq_length": base_model.max_seq_length,
                "over_max_seq_length": over_limit,
                "overlength_policy": config.overlength_policy,
                "content_sha256": content_hash,
                "preview": dg.MetadataValue.md(_preview(train, ["question", "target"])),
            },
        )

    data_modules = ["dataset_sources.py", "raw_parquet.py"]
    raw_config = profile.asset_config("raw_dataset")
    hub_source = build_hub_dataset_source(raw_config.hub_dataset)
    raw_asset = dg.asset(
        name="raw_dataset",
        group_name=DATA_GROUP,
        # Linked only where the profile reads the Hub: a new upstream commit then marks raw_dataset stale.
        deps=[hub_source] if source_is_network(raw_config) else None,
        kinds={"huggingface", "parquet"},
        code_version=code_version([raw_dataset], data_modules, raw_config.model_dump()),
        retry_policy=NETWORK_RETRY,
    )(raw_dataset)
    splits_asset = dg.asset(
        name="formatted_splits",
        group_name=DATA_GROUP,
        kinds={"pandas", "parquet"},
        code_version=code_version(
            [formatted_splits],
            ["raw_parquet.py", "record_cleaning.py", "splits.py", "token_budget.py", "chat_format.py", "base_models.py"],
            {
                "config": profile.asset_config("formatted_splits").model_dump(),
                "base_model": _base_model_settings(profile),
            },
        ),
    )(formatted_splits)
    return [hub_source, raw_asset, splits_asset]


def build_hub_dataset_source(dataset_id: str) -> dg.SourceAsset:
    """The dataset on the Hub, observed by its commit: each new commit is a new data version upstream."""

    @dg.observable_source_asset(
        name="medical_o1_hub_dataset",
        group_name=DATA_GROUP,
        description=f"{dataset_id} on the Hugging Face Hub; observing it records its current commit.",
        required_resource_keys={"hub"},
    )
    def medical_o1_hub_dataset(context) -> dg.ObserveResult:
        try:
            revision = context.resources.hub.dataset_revision(dataset_id)
        except Exception as err:  # noqa: BLE001 - offline, auth or a missing repo all mean "cannot observe now"
            raise dg.Failure(f"cannot read the current commit of {dataset_id} from the Hub: {type(err).__name__}: {err}") from err
        return dg.ObserveResult(data_version=dg.DataVersion(revision), metadata={"revision": revision, "dataset": dataset_id})

    return medical_o1_hub_dataset


def source_is_network(config) -> bool:
    return config.source == "hub"


def _base_model_settings(profile: Profile) -> dict:
    return BaseModelResource(**profile.resource_values("base_model")).model_dump()


def read_split(splits_dir: str, name: str) -> pd.DataFrame:
    return pd.read_parquet(Path(splits_dir) / f"{name}.parquet")

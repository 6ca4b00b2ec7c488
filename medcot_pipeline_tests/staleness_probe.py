"""What Dagster makes of a version of the code: run in its own process with an edited copy of the package first on
the path (test_staleness.py), it loads the definitions with a profile, reports which assets are stale and why, can
materialize some, and reports again. Prints one JSON object.

    python -m medcot_pipeline_tests.staleness_probe --home DAGSTER_DIR --profile PROFILE [--materialize a,b]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import dagster as dg


def report(defs: dg.Definitions, instance: dg.DagsterInstance) -> dict:
    """{stale: {asset: sorted cause categories}, data_versions: {asset: version}} for the six assets."""
    from dagster._core.definitions.data_version import StaleStatus
    from dagster._utils.test.data_versions import get_stale_status_resolver

    from medcot_pipeline_tests.pipeline_harness import ASSETS

    resolver = get_stale_status_resolver(instance, list(defs.resolve_asset_graph().assets_defs))
    stale, data_versions = {}, {}
    for asset in ASSETS:
        key = dg.AssetKey(asset)
        if resolver.get_status(key) == StaleStatus.STALE:
            stale[asset] = sorted({cause.category.value for cause in resolver.get_stale_causes(key)})
        data_versions[asset] = resolver.get_current_data_version(key).value
    return {"stale": stale, "data_versions": data_versions}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--home", type=Path, required=True, help="the directory of the test's sqlite instance")
    parser.add_argument("--profile", type=Path, required=True)
    parser.add_argument("--materialize", default="", help="assets to materialize between the two reports")
    args = parser.parse_args()

    import medcot_pipeline
    from medcot_pipeline_tests.pipeline_harness import load_defs, materialize, materialized_in, step_errors

    defs = load_defs(args.profile)
    instance = dg.DagsterInstance.local_temp(str(args.home))
    out = {"package": medcot_pipeline.__file__, "before": report(defs, instance)}
    if args.materialize:
        result = materialize(defs, instance, selection=args.materialize.split(","))
        out["materialized"] = sorted(materialized_in(result))
        out["success"] = result.success
        out["errors"] = [] if result.success else step_errors(instance, result.run_id)
        out["after"] = report(defs, instance)
    print(json.dumps(out))


if __name__ == "__main__":
    main()

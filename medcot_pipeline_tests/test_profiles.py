"""Profiles: every shipped one loads, `extends` merges and fails naming the file, a bad one fails at launch with
the key named, and the profile's values are what the launchpad and the Materialize buttons run."""

import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest
import yaml

from medcot_pipeline.profiles import PROFILES_DIR, Profile, ProfileError, load_profile, merge
from medcot_pipeline.settings import STAGES, StageSettings, TrainingSettings
from medcot_pipeline_tests.pipeline_harness import load_defs


@pytest.mark.parametrize("name", ["demo", "seed", "t4", "h100", "h100-multi"])
def test_shipped_profiles_load(name):
    profile = load_profile(PROFILES_DIR / f"{name}.yaml")
    training = profile.stages.lora_adapter
    # alpha / r = 2 in every shipped profile: the update's scale does not change with the rank.
    assert training.lora_alpha == 2 * training.lora_r
    # Resolved, a profile is run config Dagster accepts: every key a settings field, every value validated.
    assert set(profile.run_config()) <= {"ops", "resources", "execution"}


def test_t4_profile_keeps_the_seed_layout_with_the_evidence_s_training_values():
    profile = load_profile(PROFILES_DIR / "t4.yaml")
    training = profile.stages.lora_adapter
    assert profile.resources.base_model.name == "unsloth/Llama-3.2-3B-Instruct-bnb-4bit"
    assert (training.per_device_train_batch_size, training.gradient_accumulation_steps) == (1, 8)
    assert (training.load_in_4bit, training.gradient_checkpointing, training.max_steps, training.eval_steps) == (True, True, 200, 50)
    assert profile.resources.base_model.max_seq_length == 1024
    # benchmarks/results/quality_on_gpu.json: r64 / alpha 128 and lr 1e-3 on the h100 layout, / sqrt(3) here.
    h100 = load_profile(PROFILES_DIR / "h100.yaml").stages.lora_adapter
    assert (training.lora_r, training.lora_alpha) == (h100.lora_r, h100.lora_alpha) == (64, 128)
    assert training.learning_rate == pytest.approx(h100.learning_rate / 3**0.5, rel=0.01)


def test_seed_profile_holds_the_seeds_hyperparameters():
    """profiles/seed.yaml reproduces the seed whatever t4 and h100 are tuned to."""
    profile = load_profile(PROFILES_DIR / "seed.yaml")
    training = profile.stages.lora_adapter
    assert profile.run_config()["resources"]["base_model"]["config"] == {"name": "unsloth/Llama-3.2-3B-Instruct-bnb-4bit", "max_seq_length": 1024}
    assert (training.backend, training.load_in_4bit, training.optim, training.gradient_checkpointing) == ("auto", True, "adamw_8bit", True)
    assert (training.per_device_train_batch_size, training.gradient_accumulation_steps) == (1, 8)
    assert (training.learning_rate, training.max_steps, training.eval_steps, training.save_steps) == (1e-5, 200, 50, 50)
    assert (training.lora_r, training.lora_alpha, training.lora_dropout) == (16, 32, 0.05)
    assert training.lora_target_modules == ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    assert (training.warmup_steps, training.lr_scheduler_type, training.weight_decay, training.seed) == (5, "linear", 0.01, 3407)
    assert (training.packing, training.num_gpus) == (False, 1)
    assert training.grade_questions == 0  # the seed kept its last step
    assert profile.run_config()["ops"]["raw_dataset"]["config"] == {
        "source": "hub", "hub_dataset": "FreedomIntelligence/medical-o1-reasoning-SFT", "hub_config": "en",
    }
    assert profile.stages.formatted_splits.validation_size == 100
    assert profile.stages.merged_model.dtype == "float16"


def test_demo_profile_grades_during_training():
    training = load_profile(PROFILES_DIR / "demo.yaml").stages.lora_adapter
    assert training.grade_questions > 0 and training.eval_steps is not None
    assert training.save_steps % training.eval_steps == 0


def test_the_stage_table_is_the_profile_s_ops_section():
    """StageSettings registers each stage once: the table, the profile's typed fields and its `ops` keys agree."""
    assert list(STAGES) == list(StageSettings.model_fields) == [
        "raw_dataset", "benchmark_questions", "formatted_splits", "lora_adapter", "merged_model", "rouge_report",
        "benchmark_report", "hub_release",
    ]
    assert STAGES["lora_adapter"].settings is TrainingSettings and STAGES["lora_adapter"].gpu
    assert (STAGES["raw_dataset"].group, STAGES["raw_dataset"].gpu) == ("data", False)
    profile = load_profile(PROFILES_DIR / "h100.yaml")
    assert isinstance(profile.stages.lora_adapter, TrainingSettings) and profile.stage("lora_adapter") is profile.stages.lora_adapter
    with pytest.raises(KeyError, match="not_a_stage is not a stage"):
        profile.stage("not_a_stage")


@pytest.mark.parametrize(
    "body, named",
    [
        ("ops:\n  lora_adapter:\n    config:\n      max_stepz: 3\n", "ops.lora_adapter.config.max_stepz"),
        ("ops:\n  lora_adapter:\n    config:\n      max_steps: -1\n", "ops.lora_adapter.config.max_steps"),
        ("ops:\n  lora_adapter:\n    config:\n      learning_rate: fast\n", "ops.lora_adapter.config.learning_rate"),
        ("resources:\n  base_model:\n    config:\n      max_seq_length: 0\n", "resources.base_model.config.max_seq_length"),
        ("resources:\n  artifacts:\n    config:\n      rooot: /tmp\n", "resources.artifacts.config.rooot is not a setting"),
        ("ops:\n  not_an_asset:\n    config: {}\n", "ops.not_an_asset"),
        ("resources:\n  hub:\n    config:\n      token: hf_abc\n", "secrets come from the environment"),
        ("oops: 1\n", "unknown top-level key"),
        ("ops: [1, 2\n", "not valid YAML"),
        ("ops:\n  lora_adapter:\n    config:\n      eval_steps: 6\n      save_steps: 4\n", "save_steps (4) must be a multiple of eval_steps (6)"),
        ("extends: [a.yaml, b.yaml]\n", "`extends` must name one profile file"),
    ],
)
def test_bad_profile_names_the_key(tmp_path, body, named):
    path = tmp_path / "bad.yaml"
    path.write_text(body)
    with pytest.raises(ProfileError) as err:
        load_profile(path)
    assert named in str(err.value)
    assert str(path) in str(err.value)


def test_missing_profile_says_so(tmp_path):
    with pytest.raises(ProfileError, match="does not exist"):
        load_profile(tmp_path / "nope.yaml")


# ---------------------------------------------------------------- extends


def write(path, data) -> object:
    path.write_text(yaml.safe_dump(data))
    return path


def test_extends_merges_mappings_key_by_key_and_replaces_values_and_lists(tmp_path):
    write(tmp_path / "base.yaml", {
        "ops": {"lora_adapter": {"config": {"max_steps": 10, "lora_r": 8, "lora_alpha": 16, "lora_target_modules": ["q_proj", "v_proj"]}},
                "rouge_report": {"config": {"num_questions": 5}}},
        "resources": {"base_model": {"config": {"name": "org/base", "max_seq_length": 256}}},
    })
    write(tmp_path / "mid.yaml", {"extends": "base.yaml", "ops": {"lora_adapter": {"config": {"max_steps": 20}}}})
    child = write(tmp_path / "child.yaml", {
        "extends": "mid.yaml",
        "ops": {"lora_adapter": {"config": {"lora_target_modules": ["o_proj"]}}, "merged_model": {"config": {"dtype": "float32"}}},
        "resources": {"base_model": {"config": {"max_seq_length": 512}}},
    })
    profile = load_profile(child)
    training = profile.stages.lora_adapter
    assert (training.max_steps, training.lora_r, training.lora_alpha) == (20, 8, 16)  # mid over base, base's rest kept
    assert training.lora_target_modules == ["o_proj"]  # a list replaces, it is not appended to
    assert profile.stages.rouge_report.num_questions == 5 and profile.stages.merged_model.dtype == "float32"
    assert (profile.resources.base_model.name, profile.resources.base_model.max_seq_length) == ("org/base", 512)
    assert profile.files == (child, tmp_path / "mid.yaml", tmp_path / "base.yaml")
    assert profile.name == "child"
    # The resolved run config has no `extends` and only what the three files set.
    assert profile.run_config() == {
        "ops": {
            "lora_adapter": {"config": {"lora_r": 8, "lora_alpha": 16, "lora_target_modules": ["o_proj"], "max_steps": 20}},
            "merged_model": {"config": {"dtype": "float32"}},
            "rouge_report": {"config": {"num_questions": 5}},
        },
        "resources": {"base_model": {"config": {"name": "org/base", "max_seq_length": 512}}},
    }


def test_merge_is_deep_for_mappings_only():
    assert merge({"a": {"b": 1, "c": [1, 2]}, "d": 1}, {"a": {"c": [3]}, "e": 2}) == {"a": {"b": 1, "c": [3]}, "d": 1, "e": 2}
    assert merge({"a": {"b": 1}}, {"a": None}) == {"a": None}


def test_an_empty_section_in_the_child_keeps_the_parent_s_values(tmp_path):
    write(tmp_path / "base.yaml", {"ops": {"lora_adapter": {"config": {"max_steps": 7}}}})
    child = tmp_path / "child.yaml"
    child.write_text("extends: base.yaml\nops:\n  lora_adapter:\n    config:\n")
    assert load_profile(child).stages.lora_adapter.max_steps == 7


def test_extends_a_missing_parent_names_both_files(tmp_path):
    child = write(tmp_path / "child.yaml", {"extends": "h200.yaml"})
    with pytest.raises(ProfileError) as err:
        load_profile(child)
    assert str(err.value) == f"{child}: `extends: h200.yaml` names {tmp_path / 'h200.yaml'}, which does not exist"


def test_an_extends_cycle_fails_naming_the_files(tmp_path):
    a = write(tmp_path / "a.yaml", {"extends": "b.yaml"})
    b = write(tmp_path / "b.yaml", {"extends": "a.yaml"})
    with pytest.raises(ProfileError) as err:
        load_profile(a)
    assert str(err.value) == f"{b}: `extends` makes a cycle: {a} -> {b} -> {a}"
    itself = write(tmp_path / "self.yaml", {"extends": "self.yaml"})
    with pytest.raises(ProfileError, match="makes a cycle"):
        load_profile(itself)


def test_a_bad_value_in_the_parent_names_the_parent(tmp_path):
    parent = write(tmp_path / "parent.yaml", {"ops": {"formatted_splits": {"config": {"validation_size": -3}}}})
    child = write(tmp_path / "child.yaml", {"extends": "parent.yaml", "ops": {"merged_model": {"config": {"dtype": "float32"}}}})
    with pytest.raises(ProfileError) as err:
        load_profile(child)
    assert str(err.value).startswith(f"{parent}: ops.formatted_splits.config.validation_size: Input should be greater than or equal to 1")
    assert str(err.value).endswith(f"(read through {child})")
    # A key the parent does not have, or a secret, fails naming the file that has it, before anything merges.
    typo = write(tmp_path / "typo.yaml", {"extends": "child.yaml", "ops": {"lora_adapter": {"config": {"max_stepz": 1}}}})
    with pytest.raises(ProfileError, match=f"^{typo}: ops.lora_adapter.config.max_stepz is not a setting"):
        load_profile(typo)


def test_values_that_only_fit_together_are_checked_once_merged(tmp_path):
    """A child may change eval_steps and save_steps one file each; the combination is what is validated."""
    write(tmp_path / "base.yaml", {"ops": {"lora_adapter": {"config": {"eval_steps": 5, "save_steps": 10}}}})
    fits = write(tmp_path / "fits.yaml", {"extends": "base.yaml", "ops": {"lora_adapter": {"config": {"save_steps": 15}}}})
    assert load_profile(fits).stages.lora_adapter.save_steps == 15
    clash = write(tmp_path / "clash.yaml", {"extends": "base.yaml", "ops": {"lora_adapter": {"config": {"save_steps": 12}}}})
    with pytest.raises(ProfileError, match="save_steps \\(12\\) must be a multiple of eval_steps \\(5\\)"):
        load_profile(clash)


def test_the_profile_sha_covers_every_file_it_reads(tmp_path):
    base = write(tmp_path / "base.yaml", {"ops": {"lora_adapter": {"config": {"max_steps": 7}}}})
    child = write(tmp_path / "child.yaml", {"extends": "base.yaml"})
    import hashlib

    assert load_profile(base).sha256() == hashlib.sha256(base.read_bytes()).hexdigest()  # one file: sha256sum's digest
    before = load_profile(child).sha256()
    write(base, {"ops": {"lora_adapter": {"config": {"max_steps": 8}}}})
    assert load_profile(child).sha256() != before


def test_the_resolved_profile_is_printed_as_run_config(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "medcot_pipeline.profiles", str(PROFILES_DIR / "h100-multi.yaml")],
        capture_output=True, text=True, check=True,
    ).stdout
    resolved = yaml.safe_load(out)
    assert resolved == load_profile(PROFILES_DIR / "h100-multi.yaml").run_config()
    assert "extends" not in resolved and resolved["ops"]["lora_adapter"]["config"]["num_gpus"] == 0
    assert resolved["ops"]["lora_adapter"]["config"]["learning_rate"] == 0.001  # from h100.yaml
    bad = write(tmp_path / "bad.yaml", {"extends": "nope.yaml"})
    failed = subprocess.run([sys.executable, "-m", "medcot_pipeline.profiles", str(bad)], capture_output=True, text=True)
    assert failed.returncode != 0 and f"{bad}: `extends: nope.yaml`" in failed.stderr


def test_medcot_ask_finds_the_artifacts_root_through_the_same_loader(tmp_path, monkeypatch):
    """`medcot ask --model latest` reads the root of MEDCOT_PROFILE as the pipeline does, `extends` included."""
    from medcot_pipeline.model_paths import ModelLoadError, artifacts_root

    write(tmp_path / "base.yaml", {"resources": {"artifacts": {"config": {"root": str(tmp_path / "store")}}}})
    monkeypatch.setenv("MEDCOT_PROFILE", str(write(tmp_path / "child.yaml", {"extends": "base.yaml"})))
    assert artifacts_root() == tmp_path / "store"
    assert artifacts_root(str(tmp_path / "given")) == tmp_path / "given"
    monkeypatch.setenv("MEDCOT_PROFILE", str(write(tmp_path / "bad.yaml", {"resources": {"artifacts": {"config": {"rooot": "x"}}}})))
    with pytest.raises(ModelLoadError, match=f"MEDCOT_PROFILE: {tmp_path / 'bad.yaml'}: resources.artifacts.config.rooot is not a setting"):
        artifacts_root()
    monkeypatch.delenv("MEDCOT_PROFILE")
    assert artifacts_root() == Path("artifacts")


# ---------------------------------------------------------------- the profile in Dagster


def test_profile_values_are_the_defaults_dagster_runs_with():
    """What the Materialize buttons run and the launchpad scaffolds: run config left empty resolves, for every stage,
    to the profile's settings, with the settings model's defaults for what the profile leaves unset; resources too."""
    profile = load_profile(PROFILES_DIR / "h100-multi.yaml")
    defs = load_defs(profile.path)
    resolved = dg.validate_run_config(defs.resolve_implicit_global_asset_job_def(), {})
    for asset in STAGES:
        assert resolved["ops"][asset]["config"] == profile.stage(asset).model_dump(mode="json"), asset
    assert resolved["ops"]["lora_adapter"]["config"]["num_gpus"] == 0  # from h100-multi.yaml
    assert resolved["ops"]["lora_adapter"]["config"]["max_steps"] == 67  # from h100.yaml, which it extends
    assert resolved["ops"]["lora_adapter"]["config"]["lr_scheduler_type"] == "linear"  # the settings model's default
    assert resolved["resources"]["base_model"]["config"]["name"] == "unsloth/Llama-3.2-3B-Instruct"
    # Launchpad config overrides a default; the rest stay the profile's.
    override = dg.validate_run_config(
        defs.resolve_implicit_global_asset_job_def(), {"ops": {"lora_adapter": {"config": {"max_steps": 3}}}}
    )["ops"]["lora_adapter"]["config"]
    assert (override["max_steps"], override["learning_rate"]) == (3, 0.001)


def test_the_config_schema_keeps_each_field_s_type_and_description():
    """The launchpad shows each setting's description, and Dagster refuses a wrong type or an unknown key at launch."""
    defs = load_defs(PROFILES_DIR / "demo.yaml")
    job = defs.resolve_implicit_global_asset_job_def()
    fields = job.graph.node_named("lora_adapter").definition.config_schema.as_field().config_type.fields
    assert fields["num_gpus"].description == TrainingSettings.model_fields["num_gpus"].description
    assert fields["max_steps"].default_value == 12  # profiles/demo.yaml
    for bad in ({"max_steps": "many"}, {"max_stepz": 3}, {"backend": "jax"}):
        with pytest.raises(dg.DagsterInvalidConfigError):
            dg.validate_run_config(job, {"ops": {"lora_adapter": {"config": bad}}})


def test_the_config_classes_are_the_settings_models():
    """Declared in defs/stages.py, each config class is its stage's settings model (fields, limits) as a dg.Config."""
    from medcot_pipeline.defs.stages import CONFIG_CLASSES, TrainingConfig

    assert set(CONFIG_CLASSES) == set(STAGES)
    for asset, config_class in CONFIG_CLASSES.items():
        assert issubclass(config_class, dg.Config) and issubclass(config_class, STAGES[asset].settings)
        assert config_class.model_fields.keys() == STAGES[asset].settings.model_fields.keys()
    assert isinstance(TrainingConfig(max_steps=3), TrainingSettings)
    with pytest.raises(ValueError, match="max_steps"):
        TrainingConfig(max_steps=0)


def test_a_profile_with_extends_is_refused_as_a_run_config_file(tmp_path):
    """`-c` takes Dagster run config; a file with `extends` would be refused by Dagster with less to go on."""
    from medcot_pipeline.defs.stages import load_run_config_file

    assert isinstance(load_run_config_file(PROFILES_DIR / "h100.yaml"), Profile)
    with pytest.raises(ProfileError, match="`extends` is for MEDCOT_PROFILE files; `-c` takes plain run config"):
        load_run_config_file(PROFILES_DIR / "h100-multi.yaml")


@pytest.mark.parametrize("written,spelled", [("1e-3", "1.0e-3"), ("2E-5", "2.0e-5"), ("5e+1", "5.0e+1")])
def test_an_exponent_without_a_dot_fails_in_one_line_naming_file_and_key(tmp_path, written, spelled):
    """YAML 1.1 reads `1e-3` as the string "1e-3": Dagster's run config, which reads the same file, would refuse it in a
    40-line trace naming neither file nor key; the profile says so at launch, with the spelling that works."""
    profile = tmp_path / "lr.yaml"
    profile.write_text(f"ops:\n  lora_adapter:\n    config:\n      learning_rate: {written}\n")
    with pytest.raises(ProfileError) as caught:
        load_profile(profile)
    number = float(written)
    assert str(caught.value) == (
        f"{profile}: ops.lora_adapter.config.learning_rate: '{written}' is text to YAML, not a number (YAML 1.1 reads an "
        f"exponent without a dot as a string): write it as {spelled} or {number!r}"
    )
    # What the message suggests loads.
    profile.write_text(f"ops:\n  lora_adapter:\n    config:\n      learning_rate: {spelled}\n")
    assert load_profile(profile).stages.lora_adapter.learning_rate == number


def test_a_bad_exponent_profile_stops_the_definitions_loading_with_the_profile_error(tmp_path):
    """MEDCOT_PROFILE with `learning_rate: 1e-3`: loading the code location fails with that one ProfileError."""
    import os

    from medcot_pipeline_tests.conftest import REPO_ROOT

    profile = tmp_path / "lr.yaml"
    profile.write_text("ops:\n  lora_adapter:\n    config:\n      learning_rate: 1e-3\n")
    result = subprocess.run([sys.executable, "-c", "import medcot_pipeline.definitions"], cwd=REPO_ROOT, capture_output=True,
                            text=True, env={**os.environ, "MEDCOT_PROFILE": str(profile)}, timeout=300)
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"medcot_pipeline.profiles.ProfileError: {profile}: ops.lora_adapter.config.learning_rate: '1e-3'")
    assert "DagsterInvalidConfigError" not in result.stderr

"""Profiles: every shipped one loads, and a bad one fails at launch with the key named."""

import os
import subprocess
import sys

import pytest

from medcot_pipeline.defs.profiles import PROFILES_DIR, ProfileError
from medcot_pipeline.defs.stages import config_class, profile_settings, read_profile


@pytest.mark.parametrize("name", ["demo", "seed", "t4", "h100", "h100-multi"])
def test_shipped_profiles_load(name):
    profile = read_profile(PROFILES_DIR / f"{name}.yaml")
    training = profile_settings("lora_adapter", profile)
    # alpha / r = 2 in every shipped profile: the update's scale does not change with the rank.
    assert training.lora_alpha == 2 * training.lora_r


def test_t4_profile_keeps_the_seed_layout_with_the_evidence_s_training_values():
    profile = read_profile(PROFILES_DIR / "t4.yaml")
    training = profile_settings("lora_adapter", profile)
    assert profile.resource_values("base_model")["name"] == "unsloth/Llama-3.2-3B-Instruct-bnb-4bit"
    assert (training.per_device_train_batch_size, training.gradient_accumulation_steps) == (1, 8)
    assert (training.load_in_4bit, training.gradient_checkpointing, training.max_steps, training.eval_steps) == (True, True, 200, 50)
    assert profile.resource_values("base_model")["max_seq_length"] == 1024
    # benchmarks/results/quality_on_gpu.json: r64 / alpha 128 and lr 1e-3 on the h100 layout, / sqrt(3) here.
    h100 = profile_settings("lora_adapter", read_profile(PROFILES_DIR / "h100.yaml"))
    assert (training.lora_r, training.lora_alpha) == (h100.lora_r, h100.lora_alpha) == (64, 128)
    assert training.learning_rate == pytest.approx(h100.learning_rate / 3**0.5, rel=0.01)


def test_seed_profile_holds_the_seeds_hyperparameters():
    """profiles/seed.yaml reproduces the seed whatever t4 and h100 are tuned to."""
    profile = read_profile(PROFILES_DIR / "seed.yaml")
    training = profile_settings("lora_adapter", profile)
    assert profile.resource_values("base_model") == {"name": "unsloth/Llama-3.2-3B-Instruct-bnb-4bit", "max_seq_length": 1024}
    assert (training.backend, training.load_in_4bit, training.optim, training.gradient_checkpointing) == ("auto", True, "adamw_8bit", True)
    assert (training.per_device_train_batch_size, training.gradient_accumulation_steps) == (1, 8)
    assert (training.learning_rate, training.max_steps, training.eval_steps, training.save_steps) == (1e-5, 200, 50, 50)
    assert (training.lora_r, training.lora_alpha, training.lora_dropout) == (16, 32, 0.05)
    assert training.lora_target_modules == ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    assert (training.warmup_steps, training.lr_scheduler_type, training.weight_decay, training.seed) == (5, "linear", 0.01, 3407)
    assert (training.packing, training.num_gpus) == (False, 1)
    assert training.grade_questions == 0  # the seed kept its last step
    assert profile.ops["raw_dataset"] == {"source": "hub", "hub_dataset": "FreedomIntelligence/medical-o1-reasoning-SFT", "hub_config": "en"}
    assert profile_settings("formatted_splits", profile).validation_size == 100
    assert profile_settings("merged_model", profile).dtype == "float16"


def test_demo_profile_grades_during_training():
    training = profile_settings("lora_adapter", read_profile(PROFILES_DIR / "demo.yaml"))
    assert training.grade_questions > 0 and training.eval_steps is not None
    assert training.save_steps % training.eval_steps == 0


@pytest.mark.parametrize(
    "body, named",
    [
        ("ops:\n  lora_adapter:\n    config:\n      max_stepz: 3\n", "ops.lora_adapter.config.max_stepz"),
        ("ops:\n  lora_adapter:\n    config:\n      max_steps: -1\n", "ops.lora_adapter.config.max_steps"),
        ("ops:\n  lora_adapter:\n    config:\n      learning_rate: fast\n", "ops.lora_adapter.config.learning_rate"),
        ("resources:\n  base_model:\n    config:\n      max_seq_length: 0\n", "resources.base_model.config.max_seq_length"),
        ("ops:\n  not_an_asset:\n    config: {}\n", "ops.not_an_asset"),
        ("resources:\n  hub:\n    config:\n      token: hf_abc\n", "secrets come from the environment"),
        ("oops: 1\n", "unknown top-level key"),
        ("ops: [1, 2\n", "not valid YAML"),
        ("ops:\n  lora_adapter:\n    config:\n      eval_steps: 6\n      save_steps: 4\n", "save_steps (4) must be a multiple of eval_steps (6)"),
    ],
)
def test_bad_profile_names_the_key(tmp_path, body, named):
    path = tmp_path / "bad.yaml"
    path.write_text(body)
    with pytest.raises(ProfileError) as err:
        read_profile(path)
    assert named in str(err.value)
    assert str(path) in str(err.value)


def test_missing_profile_says_so(tmp_path):
    with pytest.raises(ProfileError, match="does not exist"):
        read_profile(tmp_path / "nope.yaml")


def test_profile_values_become_config_defaults():
    profile = read_profile(PROFILES_DIR / "demo.yaml")
    cls = config_class("lora_adapter", profile)
    assert cls().max_steps == profile.ops["lora_adapter"]["max_steps"]
    assert cls(max_steps=3).max_steps == 3


@pytest.mark.parametrize("written,spelled", [("1e-3", "1.0e-3"), ("2E-5", "2.0e-5"), ("5e+1", "5.0e+1")])
def test_an_exponent_without_a_dot_fails_in_one_line_naming_file_and_key(tmp_path, written, spelled):
    """YAML 1.1 reads `1e-3` as the string "1e-3": Dagster's run config, which reads the same file, would refuse it in a
    40-line trace naming neither file nor key; the profile says so at launch, with the spelling that works."""
    profile = tmp_path / "lr.yaml"
    profile.write_text(f"ops:\n  lora_adapter:\n    config:\n      learning_rate: {written}\n")
    with pytest.raises(ProfileError) as caught:
        read_profile(profile)
    number = float(written)
    assert str(caught.value) == (
        f"{profile}: ops.lora_adapter.config.learning_rate: '{written}' is text to YAML, not a number (YAML 1.1 reads an "
        f"exponent without a dot as a string): write it as {spelled} or {number!r}"
    )
    # What the message suggests loads.
    profile.write_text(f"ops:\n  lora_adapter:\n    config:\n      learning_rate: {spelled}\n")
    assert profile_settings("lora_adapter", read_profile(profile)).learning_rate == number


def test_a_bad_exponent_profile_stops_the_definitions_loading_with_the_profile_error(tmp_path):
    """MEDCOT_PROFILE with `learning_rate: 1e-3`: loading the code location fails with that one ProfileError."""
    from medcot_pipeline_tests.conftest import REPO_ROOT

    profile = tmp_path / "lr.yaml"
    profile.write_text("ops:\n  lora_adapter:\n    config:\n      learning_rate: 1e-3\n")
    result = subprocess.run([sys.executable, "-c", "import medcot_pipeline.definitions"], cwd=REPO_ROOT, capture_output=True,
                            text=True, env={**os.environ, "MEDCOT_PROFILE": str(profile)}, timeout=300)
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"medcot_pipeline.defs.profiles.ProfileError: {profile}: ops.lora_adapter.config.learning_rate: '1e-3'")
    assert "DagsterInvalidConfigError" not in result.stderr

"""Profiles: every shipped one loads, and a bad one fails at launch with the key named."""

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

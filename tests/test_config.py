"""Config loading: defaults, YAML, overrides, and clear errors naming the field."""

import pytest

from minirlhf.config import ConfigError, PipelineConfig, load_config


def test_demo_yaml_loads(repo):
    cfg = load_config(repo / "configs" / "demo.yaml")
    assert isinstance(cfg, PipelineConfig)
    assert cfg.data.source == "embedded"
    assert cfg.model.policy == "tiny"


def test_overrides_are_typed_and_nested(repo):
    cfg = load_config(repo / "configs" / "demo.yaml", ["ppo.kl_coef=0.02", "sft.num_train_epochs=2",
                                                      "model.tiny.n_layer=3", "ppo.adaptive_kl=true"])
    assert cfg.ppo.kl_coef == 0.02
    assert cfg.sft.num_train_epochs == 2
    assert cfg.model.tiny.n_layer == 3
    assert cfg.ppo.adaptive_kl is True


def test_unknown_key_names_path_and_allowed_keys(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("sft:\n  learning_rat: 0.001\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    message = str(err.value)
    assert "sft.learning_rat: unknown key" in message
    assert "learning_rate" in message  # the allowed keys are listed


def test_negative_learning_rate_is_refused_with_field_name():
    with pytest.raises(ConfigError) as err:
        load_config(None, ["sft.learning_rate=-0.1"])
    assert "sft.learning_rate" in str(err.value)
    assert "greater than 0" in str(err.value)


def test_bad_choice_lists_allowed_values():
    with pytest.raises(ConfigError) as err:
        load_config(None, ["ppo.kl_estimator=k2"])
    assert "ppo.kl_estimator" in str(err.value)
    assert "'k1'" in str(err.value) and "'k3'" in str(err.value)


def test_cross_field_validation():
    with pytest.raises(ConfigError, match="mini_batch_size"):
        load_config(None, ["ppo.batch_size=10", "ppo.mini_batch_size=4"])
    with pytest.raises(ConfigError, match="hh_path"):
        load_config(None, ["data.source=hh"])


def test_missing_config_file_says_what_to_do(tmp_path):
    with pytest.raises(ConfigError, match="config file not found.*demo.yaml"):
        load_config(tmp_path / "nope.yaml")


def test_malformed_override():
    with pytest.raises(ConfigError, match="section.field=value"):
        load_config(None, ["ppo.kl_coef"])


def test_section_json_is_canonical():
    a = load_config(None, ["sft.learning_rate=0.01"]).section_json("sft")
    b = load_config(None, ["sft.learning_rate=0.01"]).section_json("sft")
    c = load_config(None, ["sft.learning_rate=0.02"]).section_json("sft")
    assert a == b != c


def test_stage_keys_hold_only_the_config_each_stage_reads():
    """Another reward backbone retrains the reward model and what depends on it, never SFT; a PPO setting
    changes no earlier stage's key."""
    from minirlhf.config import load_config
    from minirlhf.pipeline import stage_config_json

    base = load_config(None)
    minilm = load_config(None, ["model.reward_backbone=minilm"])
    ppo = load_config(None, ["ppo.kl_coef=0.05"])
    for stage in ("data", "sft", "ppo", "dpo", "rloo", "eval"):
        assert stage_config_json(minilm, stage) == stage_config_json(base, stage), stage
    assert stage_config_json(minilm, "reward") != stage_config_json(base, "reward")
    assert stage_config_json(ppo, "ppo") != stage_config_json(base, "ppo")
    assert all(stage_config_json(ppo, s) == stage_config_json(base, s)
               for s in ("data", "sft", "reward", "dpo", "rloo"))

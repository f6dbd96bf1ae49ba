"""configs/demo.yaml and the built-in defaults are the same pipeline, so `minirlhf run` works from any directory."""

from minirlhf.config import load_config


def test_demo_yaml_equals_builtin_defaults(repo):
    assert load_config(repo / "configs" / "demo.yaml") == load_config(None)

"""One key per stage over everything it reads (fast tier): the code files it runs, its config, its upstream
digests and the content of its outside inputs. The end-to-end checks (a changed file, an edited source, a
recomputed SFT, a moved output root) are in tests/test_cache_e2e.py."""

import ast
import shutil
from pathlib import Path

import pytest

from minirlhf.config import load_config
from minirlhf.pipeline import PACKAGE_DIR, PIPELINE, STAGES, code_version, plan
from minirlhf.stage import StageResult
from tests.conftest import require_shared_hh

# Modules every stage imports whose source is not part of any stage's output: the config is keyed by value (its
# sections' JSON), the protocol, the store and its journal decide where things go, not what they hold.
KEYED_BY_VALUE = {"config.py", "stage.py", "store.py", "journal.py", "errors.py", "inputs.py", "pipeline.py",
                  "__init__.py", "ppo/__init__.py", "data/__init__.py"}


def imported_files(entry_module: str) -> set[str]:
    """Every minirlhf source file the entry module reaches through imports written anywhere in a file."""
    seen, pending, files = set(), {entry_module}, set()
    while pending:
        module = pending.pop()
        if module in seen:
            continue
        seen.add(module)
        base = PACKAGE_DIR.joinpath(*module.split(".")[1:])
        path = next((p for p in (base.with_suffix(".py"), base / "__init__.py") if p.is_file()), None)
        if path is None:
            continue  # a name imported from a module, not a module
        files.add(path.relative_to(PACKAGE_DIR).as_posix())
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                pending |= {a.name for a in node.names if a.name.startswith("minirlhf")}
            elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("minirlhf"):
                pending |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
    return files


@pytest.mark.parametrize("stage", list(STAGES))
def test_each_stage_code_list_covers_every_module_it_imports(stage):
    module = STAGES[stage].entry.split(":")[0]
    missing = imported_files(module) - set(STAGES[stage].code) - KEYED_BY_VALUE
    assert not missing, f"add {sorted(missing)} to STAGES[{stage!r}].code in minirlhf/pipeline.py"
    assert all((PACKAGE_DIR / rel).is_file() for rel in STAGES[stage].code)


def test_warning_settings_key_ppo_only_when_the_warning_acts():
    results = {name: _fake(name) for name in PIPELINE}
    watched = [load_config(None, extra) for extra in ([], ["hacking.min_signals=1"])]
    assert plan(watched[0], "ppo", results).key == plan(watched[1], "ppo", results).key  # logged, stops nothing
    acting = [load_config(None, ["hacking.rollback=true", *extra]) for extra in ([], ["hacking.min_signals=1"])]
    assert plan(acting[0], "ppo", results).key != plan(acting[1], "ppo", results).key
    assert plan(acting[0], "ppo", results).key != plan(watched[0], "ppo", results).key
    phrase = load_config(None, ["hacking.phrase_n=2"])  # changes a logged signal's value
    assert plan(phrase, "ppo", results).key != plan(watched[0], "ppo", results).key


def test_code_versions_differ_by_stage():
    assert len({code_version(s) for s in STAGES}) == len(STAGES)


def _fake(name: str, digest: str = "") -> StageResult:
    return StageResult(name, "k", digest or f"{name}-digest")


def test_key_moves_with_config_upstream_digest_and_nothing_else():
    cfg = load_config(None)
    data = {"data": _fake("data")}
    key = plan(cfg, "sft", data).key
    assert plan(cfg, "sft", {"data": _fake("data", "other")}).key != key
    assert plan(load_config(None, ["sft.learning_rate=0.001"]), "sft", data).key != key
    assert plan(load_config(None, ["ppo.kl_coef=0.01"]), "sft", data).key == key  # PPO's section is not SFT's
    assert plan(load_config(None, ["output_dir=/elsewhere"]), "sft", data).key == key  # the root is not in it
    assert plan(load_config(None, ["store.lock_timeout_s=5"]), "sft", data).key == key


def test_a_local_model_directory_is_keyed_by_its_content_not_its_name(tmp_path):
    model = tmp_path / "my-model"
    model.mkdir()
    (model / "config.json").write_text('{"n_layer": 2}')
    (model / "model.safetensors").write_bytes(b"weights")
    data = {"data": _fake("data")}
    key = plan(load_config(None, [f"model.policy={model}"]), "sft", data).key
    shutil.copytree(model, tmp_path / "renamed")
    assert plan(load_config(None, [f"model.policy={tmp_path / 'renamed'}"]), "sft", data).key == key
    (model / "model.safetensors").write_bytes(b"other weights")
    assert plan(load_config(None, [f"model.policy={model}"]), "sft", data).key != key


def _hh_cfg(path: Path):
    return load_config(None, ["data.source=hh", f"data.hh_path={path}"])


def test_an_hh_file_is_keyed_by_its_content(tmp_path):
    source = sorted(require_shared_hh().glob("*.jsonl.gz"))  # skips when ../shared is missing; fails in CI
    a = tmp_path / "a.jsonl.gz"
    shutil.copy(source[0], a)
    key = plan(_hh_cfg(a), "data", {}).key
    b = tmp_path / "elsewhere" / "b.jsonl.gz"
    b.parent.mkdir()
    shutil.copy(a, b)
    assert plan(_hh_cfg(b), "data", {}).key == key  # a copy at another path: same rows, same key
    a.write_bytes(a.read_bytes()[:-100] + b"\0" * 100)  # other bytes at the same path
    assert plan(_hh_cfg(a), "data", {}).key != key


def test_every_pipeline_stage_is_planned_with_its_inputs():
    cfg = load_config(None)
    results = {name: _fake(name) for name in PIPELINE}
    spec = plan(cfg, "eval", results)
    assert set(spec.inputs["policies"]) == {"sft", "ppo", "dpo", "rloo"}
    assert plan(cfg, "ppo", results).inputs == {**{f"{u}_dir": Path(cfg.output_dir) / u / "k"
                                                   for u in ("data", "sft", "reward")}, "ensemble_dir": None}
    with_ensemble = load_config(None, ["ensemble.enabled=true"])
    assert plan(with_ensemble, "ppo", results).inputs["ensemble_dir"] == Path(cfg.output_dir) / "ensemble" / "k"
    assert plan(with_ensemble, "ppo", results).key != plan(cfg, "ppo", results).key  # the ensemble's digest
    minilm = load_config(None, ["model.reward_backbone=minilm"])
    assert plan(minilm, "reward", results).inputs["sft_dir"] is None  # another backbone does not read SFT


def test_stage_levels_put_only_independent_stages_in_one_wave():
    from minirlhf.pipeline import needed_stages, stage_levels, upstream_of

    demo = load_config(PACKAGE_DIR.parent / "configs" / "demo.yaml")
    assert stage_levels(demo, needed_stages(demo)) == [["data"], ["sft"], ["reward", "dpo"], ["ppo", "rloo"], ["eval"]]
    for overrides in ([], ["grpo.enabled=true", "ensemble.enabled=true", "model.reward_backbone=gpt2"],
                      ["cai.enabled=true", "sl_cai.enabled=true", "rlaif.enabled=true", "reward.labels=ai"]):
        cfg = load_config(None, overrides)
        names = needed_stages(cfg)
        waves = stage_levels(cfg, names)
        assert sorted(n for w in waves for n in w) == sorted(names)
        wave_of = {n: k for k, w in enumerate(waves) for n in w}
        for name in names:  # every upstream in an earlier wave, and a stage as early as its upstream allow
            ups = [wave_of[u] for u in upstream_of(cfg, name)]
            assert all(u < wave_of[name] for u in ups), (overrides, name)
            assert wave_of[name] == 1 + max(ups, default=-1), (overrides, name)


def test_stage_resources_from_the_stage_config():
    from minirlhf.pipeline import stage_resources

    assert stage_resources(load_config(None), "ppo") == {"num_cpus": 1.0, "num_gpus": 0.0}
    ddp = load_config(None, ["ppo.nproc=2", "ppo.batch_size=16", "model.device=cuda"])
    assert stage_resources(ddp, "ppo") == {"num_cpus": 2.0, "num_gpus": 2.0}  # one CPU and one GPU per rank
    assert stage_resources(ddp, "dpo") == {"num_cpus": 1.0, "num_gpus": 1.0}
    sft_ddp = load_config(None, ["sft.nproc=4"])  # a TRL stage: one CPU per rank too
    assert stage_resources(sft_ddp, "sft") == {"num_cpus": 4.0, "num_gpus": 0.0}
    assert stage_resources(sft_ddp, "reward") == {"num_cpus": 1.0, "num_gpus": 0.0}
    given = load_config(None, ["runner.resources={eval: {num_cpus: 4, num_gpus: 0.5}}"])
    assert stage_resources(given, "eval") == {"num_cpus": 4.0, "num_gpus": 0.5}

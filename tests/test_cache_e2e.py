"""One key over everything a stage reads, end to end: a changed data file, an edited stage source, a recomputed
SFT and a moved output root, under `minirlhf run` and `minirlhf flow` (separate processes, as a user runs them).

What each stage did is read back from the store's stage_runs rows of the run that just finished.
"""

import gzip
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from minirlhf.config import load_config
from minirlhf.pipeline import run_pipeline
from minirlhf.store import Store
from tests.conftest import SHARED_HH
from tests.test_ppo import TINY

REPO = Path(__file__).resolve().parents[1]
TIMEOUT_S = 900


def minirlhf(command: str, root: Path, *overrides: str, pythonpath: Path | None = None,
             env: dict | None = None) -> tuple[dict[str, bool], float]:
    """Run `minirlhf <command>` on the tiny config (plus `overrides`) at `root`; return {stage: cache_hit} of that
    run and its seconds. `pythonpath`: run the package copy there instead of the checkout; `env`: the processes'
    environment (a flow needs a Prefect server's PREFECT_API_URL: the conftest's `server_env`)."""
    env = dict(env or os.environ)
    if pythonpath:
        env["PYTHONPATH"] = str(pythonpath)
    settings = [*TINY, *overrides, f"output_dir={root}"]  # later settings win
    args = [sys.executable, "-m", "flows.cli", command, *(a for o in settings for a in ("--set", o))]
    started = time.perf_counter()
    done = subprocess.run(args, capture_output=True, text=True, timeout=TIMEOUT_S, env=env, cwd=pythonpath or REPO)
    seconds = time.perf_counter() - started
    assert done.returncode == 0, done.stderr[-3000:]
    rows = Store.for_output_dir(root).query(
        "select stage, cache_hit from stage_runs "
        "where run_id = (select run_id from runs order by started_at desc limit 1) "
        "order by started_at")
    return dict(zip(rows["stage"], rows["cache_hit"])), seconds


@pytest.fixture(scope="module")
def computed(tiny_cli_run) -> Path:
    """The whole tiny pipeline once, by the CLI (conftest); each test works on its own copy of this output root."""
    return tiny_cli_run[0]


def copy_of(root: Path, where: Path) -> Path:
    shutil.copytree(root, where, ignore=shutil.ignore_patterns("*.lock"))
    return where


@pytest.mark.e2e
def test_a_moved_output_root_is_answered_from_its_own_files(computed, tmp_path, server_env):
    moved = copy_of(computed, tmp_path / "moved")
    hidden = computed.with_name("hidden-while-testing")
    computed.rename(hidden)  # nothing of the original can be read while the copy runs
    try:
        run_hits, run_s = minirlhf("run", moved)
        flow_hits, flow_s = minirlhf("flow", moved, env=server_env)
    finally:
        hidden.rename(computed)
    assert all(run_hits.values()) and len(run_hits) == 7
    assert all(flow_hits.values()) and len(flow_hits) == 7  # Prefect's cache, copied with the root, answers
    paths = Store.for_output_dir(moved).query("select distinct path from artifacts")["path"]
    assert all(str(tmp_path / "moved") in p or str(computed) in p for p in paths)  # new rows name the copy
    newest = Store.for_output_dir(moved).query(
        "select a.path from artifacts a join stage_runs s using (stage_run_id) "
        "where s.run_id = (select run_id from runs order by started_at desc limit 1)")["path"]
    assert len(newest) == 7 and all(p.startswith(str(moved)) for p in newest)
    print(f"\nmoved root, all reused: minirlhf run {run_s:.1f} s, minirlhf flow {flow_s:.1f} s")


@pytest.mark.e2e
def test_an_edited_reward_source_recomputes_reward_and_below_under_run_and_flow(computed, tmp_path, server_env):
    root = copy_of(computed, tmp_path / "root")
    assert all(minirlhf("flow", root, env=server_env)[0].values())  # the flow and the CLI share keys: all cached
    package = tmp_path / "package"
    for name in ("minirlhf", "tasks", "flows", "dashboards"):
        shutil.copytree(REPO / name, package / name, ignore=shutil.ignore_patterns("__pycache__"))
    reward_py = package / "minirlhf" / "reward.py"

    # A comment: the reward stage's code version changes, it is recomputed, to the same bytes: nothing below moves.
    reward_py.write_text(reward_py.read_text() + "\n# a comment\n")
    hits, comment_s = minirlhf("run", root, pythonpath=package)
    assert hits == {"data": True, "sft": True, "reward": False, "ppo": True, "dpo": True, "rloo": True, "eval": True}

    # A change of behaviour (another score-head init): the reward model's weights change, and so does all below it.
    source = reward_py.read_text()
    head_init = "_backbone(cfg, Path(sft_dir) if sft_dir else None), cfg.seed)"  # the score head's seed
    assert head_init in source
    reward_py.write_text(source.replace(head_init, head_init[:-1] + " + 1)"))
    flow_hits, flow_s = minirlhf("flow", root, pythonpath=package, env=server_env)
    assert flow_hits == {"data": True, "sft": True, "reward": False, "ppo": False, "dpo": True, "rloo": False,
                         "eval": False}
    run_hits, _ = minirlhf("run", root, pythonpath=package)  # the CLI finds what the flow computed: same keys
    assert all(run_hits.values())
    print(f"\nedited reward.py: comment {comment_s:.1f} s (run), behaviour {flow_s:.1f} s (flow)")


@pytest.mark.slow
def test_recomputed_sft_with_the_same_seed_keeps_the_reward_model(computed, tmp_path):
    root = copy_of(computed, tmp_path / "root")
    sft = next((root / "sft").glob("[0-9a-f]*[0-9a-f]"))
    shutil.rmtree(sft)
    started = time.perf_counter()
    results = run_pipeline(load_config(None, [*TINY, f"output_dir={root}"]))
    hits = {name: result.cache_hit for name, result in results.items()}
    assert hits == {"data": True, "sft": False, "reward": True, "ppo": True, "dpo": True, "rloo": True, "eval": True}
    print(f"\nSFT recomputed, everything below reused: {time.perf_counter() - started:.1f} s")


def write_hh_rows(path: Path, first: int, n: int) -> None:
    source = sorted(SHARED_HH.glob("*.jsonl.gz"))
    if not source:
        pytest.fail(f"no HH-RLHF file under {SHARED_HH}: the shared data must be beside the checkout")
    with gzip.open(source[0], "rt") as fh:
        rows = fh.read().splitlines()[first:first + n]
    with gzip.open(path, "wt") as fh:
        fh.write("\n".join(rows) + "\n")


@pytest.mark.slow
def test_a_preference_file_that_gained_rows_recomputes_data_and_what_reads_it(tmp_path):
    hh = tmp_path / "prefs.jsonl.gz"
    write_hh_rows(hh, 0, 40)
    hh_set = ["data.source=hh", f"data.hh_path={hh}", "data.hh_n_train=30", "sft.max_steps=2", "reward.max_steps=2",
              "sft.max_length=96", "reward.max_length=96", "model.max_prompt_length=48"]
    cfg = load_config(None, [*TINY, *hh_set, f"output_dir={tmp_path / 'artifacts'}"])

    def run() -> dict[str, bool]:
        return {name: result.cache_hit for name, result in run_pipeline(cfg, ("reward",)).items()}

    assert run() == {"data": False, "sft": False, "reward": False}
    assert run() == {"data": True, "sft": True, "reward": True}
    write_hh_rows(hh, 0, 60)  # the nightly export gained 20 rows: same path, other bytes
    assert run() == {"data": False, "sft": False, "reward": False}

"""End to end (slowest tier): the `minirlhf` command runs every stage on a tiny config, then a rerun reuses them."""

import json
import shutil
import subprocess
import sys

import pytest

from tests.test_ppo import TINY

pytestmark = pytest.mark.e2e


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "minirlhf.cli", *args], capture_output=True, text=True, timeout=900)


def test_cli_runs_whole_pipeline_and_rerun_reuses_everything(tiny_cli_run, tmp_path):
    computed, _ = tiny_cli_run
    shutil.copytree(computed, tmp_path, dirs_exist_ok=True)  # the first run: the shared fixture's, copied
    sets = [a for s in TINY + [f"output_dir={tmp_path}"] for a in ("--set", s)]
    query = _cli("query", "select stage, status, cache_hit from stage_runs order by started_at",
                 "--output-dir", str(tmp_path), "--format", "json")
    rows = json.loads(query.stdout)
    assert [r["stage"] for r in rows] == ["data", "sft", "reward", "ppo", "dpo", "rloo", "eval"]
    assert all(r["status"] == "completed" and not r["cache_hit"] for r in rows)
    metrics = json.loads(_cli("query", "select name, value from metrics where name like 'eval/%'",
                              "--output-dir", str(tmp_path), "--format", "json").stdout)
    names = {m["name"] for m in metrics}
    for name in ("eval/sft/gold_reward", "eval/ppo/gold_reward", "eval/ppo/kl", "eval/ppo/win_rate_gold",
                 "eval/ppo/proxy_reward"):
        assert name in names
    samples = json.loads(_cli("query", "select policy, count(*) as n from samples where step = 0 "
                                       "group by policy order by policy",
                              "--output-dir", str(tmp_path), "--format", "json").stdout)
    assert samples == [{"policy": p, "n": 16} for p in ("dpo", "ppo", "rloo", "sft")]

    second = _cli("run", *sets)
    assert second.returncode == 0, second.stderr[-3000:]
    rows = json.loads(_cli("query", "select cache_hit from stage_runs order by started_at",
                           "--output-dir", str(tmp_path), "--format", "json").stdout)
    assert [r["cache_hit"] for r in rows[7:]] == [True] * 7

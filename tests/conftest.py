"""Shared test setup: offline by construction, small thread counts, the shared HH-RLHF data path, and the one rule
for tests whose outside input is missing (the ../shared rows, the packaged models, Chromium): on a developer's
machine they skip with the reason; in CI (env CI set) they fail, so CI can never silently lose them."""

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import NoReturn

import pytest

for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
    os.environ[var] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_DISABLED", "true")

REPO = Path(__file__).resolve().parents[1]
SHARED_HH = REPO.parent / "shared" / "data" / "hh-rlhf"
SHARED_HH_FILE = SHARED_HH / "harmless-base-test.first1800.jsonl.gz"


def skip_or_fail_in_ci(reason: str) -> NoReturn:
    """A test whose outside input is missing: skipped with `reason`, or failed with it when env CI is set."""
    if os.environ.get("CI"):
        pytest.fail(f"{reason} [CI is set: a missing input fails the test instead of skipping it]", pytrace=False)
    pytest.skip(reason)


def require_shared_hh() -> Path:
    """The shared HH-RLHF folder (../shared/data/hh-rlhf beside the checkout), or skip (fail in CI)."""
    if not SHARED_HH_FILE.is_file():
        skip_or_fail_in_ci(f"shared HH-RLHF rows not found at {SHARED_HH_FILE}: "
                           "clone the shared data as ../shared beside the checkout")
    return SHARED_HH


def require_real_model(name: str) -> tuple[str, str | None]:
    """resolve_source(name) for a packaged offline model ('smollm2', 'minilm'), or skip (fail in CI)."""
    from minirlhf.models import ModelNotAvailable, resolve_source  # imported here: torch only for tests that need it

    try:
        return resolve_source(name)
    except ModelNotAvailable as err:
        skip_or_fail_in_ci(f"packaged model {name!r} not available: {err}")


@pytest.fixture
def repo() -> Path:
    return REPO


# ---- a real Prefect server for tests that run `minirlhf flow` as a separate process -----------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop_process(proc: subprocess.Popen, sig=signal.SIGTERM) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, sig)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.fixture(scope="session")
def prefect_harness(tmp_path_factory):
    """Prefect's test server for flows run in this process (tests/test_flow.py, test_sweep.py, test_ray.py), started
    once per session (14 s each start here); results that are not ours go to a tmp dir (the harness does not
    isolate them)."""
    from prefect.settings import (PREFECT_RESULTS_LOCAL_STORAGE_PATH, PREFECT_SERVER_ANALYTICS_ENABLED,
                                  temporary_settings)
    from prefect.testing.utilities import prefect_test_harness

    default_results = tmp_path_factory.mktemp("prefect-default-results")
    with temporary_settings({PREFECT_RESULTS_LOCAL_STORAGE_PATH: default_results,
                             PREFECT_SERVER_ANALYTICS_ENABLED: False}):
        with prefect_test_harness(server_startup_timeout=120):
            yield


@pytest.fixture(scope="session")
def server_env(tmp_path_factory):
    """Environment for processes talking to a fresh `prefect server start` (own PREFECT_HOME and database), shared
    by the modules that run `minirlhf flow` as separate processes (each flow run is its own: ids, output roots)."""
    home = tmp_path_factory.mktemp("prefect-home")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env |= {"PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_RESULTS_LOCAL_STORAGE_PATH": str(home / "default-results"),
            "PREFECT_API_URL": f"http://127.0.0.1:{port}/api"}
    log = (home / "server.log").open("w")
    proc = subprocess.Popen([Path(sys.executable).with_name("prefect"), "server", "start", "--host", "127.0.0.1",
                             "--port", str(port)],
                            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 240
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/health", timeout=5) as response:
                if response.status == 200:
                    break
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            stop_process(proc)
            pytest.fail(f"prefect server did not start:\n{(home / 'server.log').read_text()[-3000:]}")
        time.sleep(1)
    yield env
    stop_process(proc)


# ---- the tiny pipeline once, by the CLI, as a user runs it (shared by the e2e, console and cache tests) ----------
@pytest.fixture(scope="session")
def tiny_cli_run(tmp_path_factory) -> tuple[Path, str]:
    """`minirlhf run` of every stage on the tiny config (tests/test_ppo.py TINY) in a fresh output root: the root
    and what the command printed (stdout + stderr). Tests that change files work on a copy of the root."""
    from tests.test_ppo import TINY

    root = tmp_path_factory.mktemp("tiny-cli") / "artifacts"
    env = {**os.environ, "COLUMNS": "120"}
    env.pop("MINIRLHF_VERBOSE", None)
    sets = [a for o in [*TINY, f"output_dir={root}"] for a in ("--set", o)]
    done = subprocess.run([sys.executable, "-m", "flows.cli", "run", *sets], capture_output=True, text=True,
                          timeout=900, env=env, cwd=REPO)
    assert done.returncode == 0, done.stderr[-3000:]
    return root, done.stdout + done.stderr


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """The whole tiny pipeline once per pytest run (tests/test_ppo.py's TINY), with the stages that are off by default
    on: GRPO and the reward-model probes. tests/test_baselines.py, test_interpret.py and test_compare.py read it."""
    from minirlhf.config import load_config
    from minirlhf.pipeline import run_pipeline
    from tests.test_ppo import TINY

    cfg = load_config(None, TINY + ["grpo.enabled=true", "interpret.enabled=true",
                                    f"output_dir={tmp_path_factory.mktemp('tiny-run')}"])
    return cfg, run_pipeline(cfg)

"""Stage tasks on a Ray cluster through Prefect's RayTaskRunner (prefect-ray), the flows' `runner.kind: ray`.

Usage:
    minirlhf flow --runner ray                                   # a local Ray instance for this run (every core)
    minirlhf sweep --runner ray --ray-address auto               # the instance `ray start --head` runs here
    minirlhf sweep --runner ray --ray-address ray://head:10001   # a remote cluster (a shared output root: README)

    with stage_runner(cfg, names) as runner:     # None for runner.kind local; checks the setup before any stage
        results = run_waves(runner, cfg, names, run_id, {})

Prefect's task runner places the tasks; Ray schedules them by what each declares (`remote_options(num_cpus,
num_gpus)` from minirlhf.pipeline.stage_resources), and a task computes with as many torch threads as CPUs it holds
(`runner.threads_per_cpu`; set in the task, since Ray reuses a worker process for tasks of any size). The flow
submits each wave of independent stages at once (minirlhf.pipeline.stage_levels: DPO beside the reward model, PPO
and the baselines together) and waits for it before planning the next, because a stage's key holds its upstream
digests. Workers write files only: outputs under the shared output root and a journal
of their store rows, which the flow process replays into DuckDB (tasks/common.py, minirlhf/journal.py).

Bad setup fails in one line before any stage runs (RunnerSetupError): no Ray cluster at the address, no Prefect
server the workers can use, an output root the workers cannot reach, a stage asking for more CPUs or GPUs than the
cluster has.
"""

from __future__ import annotations

import os
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from minirlhf.config import PipelineConfig
from minirlhf.errors import UserError, one_line
from minirlhf.pipeline import plan, stage_levels, stage_resources
from minirlhf.stage import StageResult
from prefect.task_runners import TaskRunner

from tasks import Submitted, collect_stage_task, run_stage_task, submit_stage_task

# What a worker must see of the flow's environment: the Prefect server, offline switches, minirlhf's own settings.
FORWARDED_ENV = ("PREFECT_API_KEY", "HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE",
                 "TOKENIZERS_PARALLELISM", "WANDB_DISABLED", "PREFECT_LOGGING_EXTRA_LOGGERS")
PROBE_TIMEOUT_S = 120
# Ray re-runs a task whose worker process died (SIGKILL, OOM, a lost node) this many times; the stage resumes from
# its files (PPO from its last checkpoint). Exceptions raised by a stage are Prefect's to retry, not Ray's.
WORKER_DEATH_RETRIES = 2


class RunnerSetupError(UserError):
    """The Ray setup cannot run the flow; the message is one line saying what to change."""


def prefect_api_url() -> str | None:
    """The Prefect server this process talks to (PREFECT_API_URL from the environment or Prefect's settings)."""
    from prefect.settings import PREFECT_API_URL

    return PREFECT_API_URL.value()


def worker_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k in FORWARDED_ENV or k.startswith("MINIRLHF_")}
    return env | {"PREFECT_API_URL": prefect_api_url() or ""}


def ray_task_runner(cfg: PipelineConfig) -> TaskRunner:
    from prefect_ray import RayTaskRunner

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # offline by construction: no usage report at ray.init

    # Workers' consoles stay on the workers (their progress bars would interleave here); the flow prints each stage's
    # line when it collects it, and the task runs' logs are in the Prefect UI.
    init = {"include_dashboard": False, "runtime_env": {"env_vars": worker_env()}, "log_to_driver": False}
    address = cfg.runner.ray_address
    if address is None:  # a local instance for this flow run
        init["num_cpus"] = cfg.runner.ray_num_cpus or os.cpu_count()
    elif address == "auto":  # must join a running instance (prefect-ray would start a new one for "auto")
        init["address"] = "auto"
        address = None
    return RayTaskRunner(address=address, init_kwargs=init)


def task_threads(cfg: PipelineConfig, stage: str) -> int:
    """Torch threads of a stage's task: the CPUs it holds times `runner.threads_per_cpu`."""
    return max(1, int(stage_resources(cfg, stage)["num_cpus"] * cfg.runner.threads_per_cpu))


@contextmanager
def stage_runner(cfg: PipelineConfig, stages: list[str]) -> Iterator[TaskRunner | None]:
    """None for `runner.kind: local`; else a started RayTaskRunner whose cluster passed `check_setup` (on a Ray
    instance `start_ray` started earlier in this process, such as the CLI's check, the runner joins it)."""
    if cfg.runner.kind == "local":
        yield None
        return
    runner = start_ray(cfg, stages)
    try:
        yield runner
    finally:
        runner.__exit__(None, None, None)


def start_ray(cfg: PipelineConfig, stages: list[str]) -> TaskRunner:
    """A RayTaskRunner, started (Ray connected or a local instance up), after every check of the setup."""
    try:
        import prefect_ray  # noqa: F401
    except ImportError:
        raise RunnerSetupError("runner.kind=ray needs prefect-ray: pip install -e '.[ray]'") from None
    if not prefect_api_url():
        raise RunnerSetupError("runner.kind=ray needs a Prefect server the workers can reach (without one each Ray "
                               "worker starts its own): drop --ephemeral, or set PREFECT_API_URL")
    address = cfg.runner.ray_address
    if address not in (None, "auto"):  # ray.init retries an address nobody answers at for minutes: ask first
        problem = unreachable(address)
        if problem:
            raise no_cluster(address, problem)
    runner = ray_task_runner(cfg)
    try:
        runner.__enter__()
    except ConnectionError as err:
        raise no_cluster(address or "a local instance", one_line(str(err)) or type(err).__name__) from None
    try:
        check_setup(cfg, stages)
    except BaseException:
        runner.__exit__(None, None, None)
        raise
    return runner


def no_cluster(address: str, why: str) -> RunnerSetupError:
    return RunnerSetupError(f"runner.ray_address={address}: no Ray cluster answers there ({why}); start one with "
                            "`ray start --head`, or fix --ray-address")


def unreachable(address: str, timeout_s: float = 5.0) -> str | None:
    """Why nothing answers at a Ray address (`ray://host:10001`, `host:6379`), or None when a TCP connection opens."""
    import socket

    rest = address.rpartition("://")[2]
    host, _, port = rest.rpartition(":")
    try:
        with socket.create_connection((host or rest, int(port)), timeout=timeout_s):
            return None
    except ValueError:
        return f"no port in {address!r}"
    except OSError as err:
        return f"{host}:{port}: {err.strerror or err}"


def check_setup(cfg: PipelineConfig, stages: list[str]) -> None:
    """Before any stage: the cluster holds what every stage asks for, and a worker reaches the output root (a token
    file this process wrote) and the Prefect server."""
    import ray

    cluster = ray.cluster_resources()
    for stage in stages:
        asks = stage_resources(cfg, stage)
        for resource, unit in (("num_cpus", "CPU"), ("num_gpus", "GPU")):
            if asks[resource] > cluster.get(unit, 0.0):
                raise RunnerSetupError(
                    f"stage {stage} asks for {asks[resource]:g} {unit}s (runner.resources / <stage>.nproc / "
                    f"model.device) but the Ray cluster has {cluster.get(unit, 0.0):g}: add nodes, or ask for less")
    root = Path(cfg.output_dir).resolve()
    root.mkdir(parents=True, exist_ok=True)
    token = root / f".probe-{uuid.uuid4().hex[:8]}"
    token.write_text(token.name)
    try:
        probe = ray.remote(num_cpus=0)(worker_probe).remote(str(token), prefect_api_url())
        problems = ray.get(probe, timeout=PROBE_TIMEOUT_S)
    finally:
        token.unlink(missing_ok=True)
    if problems:
        raise RunnerSetupError(f"a Ray worker on {problems[0]}")


def worker_probe(token: str, api_url: str) -> list[str]:
    """Run on a worker: what it cannot reach. Empty when the output root and the Prefect server are both there."""
    import socket
    import urllib.request

    host, problems = socket.gethostname(), []
    path = Path(token)
    if not path.is_file() or path.read_text() != path.name:
        problems.append(f"{host} cannot see the output root {path.parent}: give every worker the same path on a "
                        "shared file system (NFS, a mounted bucket), or set output_dir to one")
    try:
        with urllib.request.urlopen(f"{api_url}/health", timeout=10) as response:
            response.read()
    except OSError as err:
        problems.append(f"{host} cannot reach the Prefect server at {api_url} ({err}): start it on an address the "
                        "workers reach (`prefect server start --host 0.0.0.0`) and set PREFECT_API_URL to it")
    return problems


def submit(runner: TaskRunner, cfg: PipelineConfig, spec, run_id: str) -> Submitted:
    """Submit one stage's task with what it asks the cluster for (Ray re-runs it if its worker process dies)."""
    from prefect_ray.context import remote_options

    with remote_options(**stage_resources(cfg, spec.name), max_retries=WORKER_DEATH_RETRIES):
        return submit_stage_task(runner, spec, run_id, threads=task_threads(cfg, spec.name))


def collect_all(submitted: list[Submitted]) -> list[StageResult]:
    """Every task's result, in order; each journal is replayed even when another task failed, then the first
    failure is raised."""
    results, failure = [], None
    for one in submitted:
        try:
            results.append(collect_stage_task(one))
        except Exception as err:  # re-raised below, once every journal is in the store
            failure = failure or err
    if failure is not None:
        raise failure
    return results


def run_waves(runner: TaskRunner | None, cfg: PipelineConfig, names: list[str], run_id: str,
              results: dict[str, StageResult]) -> dict[str, StageResult]:
    """Run `names` (pipeline order) into `results`, which holds their upstream: locally (runner None) one after
    another in this process; on Ray wave by wave (stage_levels), each wave's stages at once."""
    if runner is None:
        for name in names:
            results[name] = run_stage_task(plan(cfg, name, results), run_id)
    else:
        run_waves_of(runner, [(cfg, names, results)], run_id)
    return results


def run_waves_of(runner: TaskRunner, jobs: list[tuple[PipelineConfig, list[str], dict[str, StageResult]]],
                 run_id: str) -> None:
    """Several pipelines at once (a comparison's seeds): wave k of every job is submitted together. Each job is
    (config, stage names, its results so far), and its results dict is filled in."""
    levels = [stage_levels(cfg, [n for n in names if n not in results]) for cfg, names, results in jobs]
    for k in range(max(map(len, levels), default=0)):
        submitted, into = [], []
        for (cfg, _, results), level in zip(jobs, levels):
            for name in level[k] if k < len(level) else []:
                submitted.append(submit(runner, cfg, plan(cfg, name, results), run_id))
                into.append((results, name))
        for (results, name), result in zip(into, collect_all(submitted)):
            results[name] = result


def ppo_and_eval(runner: TaskRunner | None, cfgs: list[PipelineConfig], shared: dict[str, StageResult],
                 run_id: str) -> list[tuple[StageResult, StageResult]]:
    """PPO and its evaluation for each config of a sweep (SFT and the reward model shared): locally one after
    another; on Ray every PPO at once, then every evaluation."""
    if runner is None:
        pairs = []
        for cfg in cfgs:
            ppo = run_stage_task(plan(cfg, "ppo", shared), run_id)
            pairs.append((ppo, run_stage_task(plan(cfg, "eval", {**shared, "ppo": ppo}), run_id)))
        return pairs
    ppos = collect_all([submit(runner, cfg, plan(cfg, "ppo", shared), run_id) for cfg in cfgs])
    evals = collect_all([submit(runner, cfg, plan(cfg, "eval", {**shared, "ppo": ppo}), run_id)
                         for cfg, ppo in zip(cfgs, ppos)])
    return list(zip(ppos, evals))

"""The stages, their keys, and running them: plan a stage, then reuse its complete output or compute it.

Usage:
    from minirlhf.config import load_config
    from minirlhf.pipeline import run_pipeline, plan, run_stage
    results = run_pipeline(load_config("configs/demo.yaml"))     # {"data": StageResult, "sft": ..., ...}

    spec = plan(cfg, "sft", {"data": results["data"]})          # key (computed once), output dir, inputs
    result = run_stage(spec, store, run_id)                     # reuse the verified output or compute it

`minirlhf run` calls `run_pipeline`; the Prefect flow (flows/) calls `plan` and `run_stage` through one cached
task per stage, with `spec.key` as its cache key. Both find a stage's output at `<output_dir>/<stage>/<key>`
and trust the files, not a cache. `stage_key` is the one place a key is computed: the stage's name, the
config sections it reads (and the seed), its code version (the sha256 of the package files in `Stage.code`),
the digests of its upstream outputs and the content digests of every outside input it reads (minirlhf.inputs).
Every run, stage, metric and artifact is recorded in the DuckDB store at `<output_dir>/rlhf.duckdb`.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import logging
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any, Callable

from filelock import FileLock

from minirlhf.compare import episodes
from minirlhf.config import BASELINES, PipelineConfig
from minirlhf.console import print_stage_line, quiet_libraries, stage_failure_line
from minirlhf.inputs import external_inputs
from minirlhf.launch import launch
from minirlhf.stage import StageResult, load_output
from minirlhf.store import Store, StoreLogger

log = logging.getLogger("minirlhf")

PACKAGE_DIR = Path(__file__).resolve().parent
POLICY_STAGES = ("ppo", *BASELINES, "sl_cai")  # what the eval stage compares with SFT, when enabled
# The kind of each stage's artifact row; the others: "checkpoint".
ARTIFACT_KINDS = {"data": "dataset", "eval": "evaluation", "sweep": "sweep", "calibration": "calibration",
                  "compare": "comparison", "interpret": "analysis", "judge": "evaluation", "cai": "dataset",
                  "rlaif": "dataset"}


@dataclass(frozen=True)
class Stage:
    """A stage: the config sections its output depends on, the stages it reads, its function and its code.

    `entry` ("module:function") is imported only when the stage computes, so planning and a fully cached run
    never import torch. `code` lists the package files that compute the output (paths under minirlhf/): their
    bytes are the stage's code version, so editing one recomputes the stage and what is below it
    (tests/test_keys.py checks the list covers every module the entry imports). `retries`: attempts after
    the first that an orchestrator may make, each passed to the function as `attempt`."""

    name: str
    sections: tuple[str, ...]
    upstream: tuple[str, ...]
    entry: str
    code: tuple[str, ...]
    retries: int = 0

    def function(self) -> Callable[..., StageResult]:
        module, name = self.entry.split(":")
        return getattr(importlib.import_module(module), name)


GOLD = ("data/gold.py", "data/facts.json", "data/formatting.py")  # the gold annotator and the facts it reads
# What the TRL stages share (task.py imports gold; training.py splits a batch over data-parallel ranks).
TRAINING = ("training.py", "distributed.py", "models.py", "pooling.py", "data/task.py", *GOLD)
# PPO and what watches it: the gold-free signals (hacking.py, ppo/monitor.py); it scores with the ensemble through
# scoring.py, so the ensemble's training code (ensemble.py, reward.py) stays out of PPO's key.
WATCHED_PPO = ("ppo/trainer.py", "distributed.py", "ppo/monitor.py", "hacking.py", "detect.py")
SAMPLING = ("generation.py", "scoring.py", "ppo/core.py", *GOLD)  # sample, score with the RM, score with gold

STAGES: dict[str, Stage] = {s.name: s for s in (
    Stage("data", ("data",), (), "minirlhf.data.prepare:run_data",
          ("data/prepare.py", "data/task.py", "data/hh.py", *GOLD)),
    # `seed` is in every key through the top level; the model section decides the base model.
    Stage("sft", ("model", "sft"), ("data",), "minirlhf.sft:run_sft", ("sft.py", *TRAINING)),
    Stage("reward", ("model", "reward"), ("data", "sft", "rlaif"), "minirlhf.reward:run_reward",
          ("reward.py", "scoring.py", "stats.py", *TRAINING)),
    # Reward models beside the proxy, for the gold-free hacking signals and the conservative reward (off by default).
    Stage("ensemble", ("model", "reward", "ensemble"), ("data", "sft", "reward"), "minirlhf.ensemble:run_ensemble",
          ("ensemble.py", "reward.py", "scoring.py", "stats.py", *TRAINING)),
    Stage("ppo", ("model", "ppo", "hacking"), ("data", "sft", "reward", "ensemble"), "minirlhf.ppo.trainer:run_ppo",
          (*WATCHED_PPO, *SAMPLING, *TRAINING), retries=2),
    Stage("dpo", ("model", "dpo"), ("data", "sft"), "minirlhf.dpo:run_dpo", ("dpo.py", "scoring.py", *TRAINING)),
    Stage("rloo", ("model", "rloo"), ("data", "sft", "reward"), "minirlhf.rloo:run_rloo",
          ("rloo.py", *SAMPLING, *TRAINING)),
    Stage("grpo", ("model", "grpo"), ("data", "sft", "reward"), "minirlhf.grpo:run_grpo",
          ("grpo.py", "rloo.py", *SAMPLING, *TRAINING)),
    # Constitutional AI, supervised part: red-team answers critiqued and revised by a constitution (off by default).
    Stage("cai", ("model", "cai"), ("data", "sft"), "minirlhf.cai:run_cai",
          ("cai.py", "constitution.py", "generation.py", "ppo/core.py", *TRAINING)),
    # CAI-SL: the SFT model fine-tuned on the revisions (off by default); eval compares it with SFT.
    Stage("sl_cai", ("model", "sl_cai"), ("data", "sft", "cai"), "minirlhf.sl_cai:run_sl_cai",
          ("sl_cai.py", "sft.py", *TRAINING)),
    # AI feedback: the training pairs relabelled by a feedback model under the constitution (off by default).
    Stage("rlaif", ("model", "rlaif"), ("data", "sft"), "minirlhf.rlaif:run_rlaif",
          ("rlaif.py", "judge.py", "reward.py", "scoring.py", "constitution.py", "stats.py", *TRAINING)),
    # What the reward model computes: probes and token attributions (off by default).
    Stage("interpret", ("interpret",), ("data", "reward"), "minirlhf.interpret:run_interpret",
          ("interpret.py", "scoring.py", "plots.py", "gao.py", "models.py", "pooling.py", "training.py",
           "distributed.py", "data/task.py", *GOLD)),
    # Its key holds the digest of every policy it compares: switching a baseline on or off changes it.
    Stage("eval", ("model", "eval", "detect"), ("data", "sft", "reward", *POLICY_STAGES), "minirlhf.evaluate:run_eval",
          ("evaluate.py", *WATCHED_PPO, *SAMPLING, *TRAINING)),
    # Independent judges (off by default): a language model and a judge reward model trained on its own rows;
    # agreement with the human labels, policies against SFT.
    Stage("judge", ("model", "reward", "judge"), ("data", "eval"), "minirlhf.judge:run_judge",
          ("judge.py", "reward.py", "scoring.py", "stats.py", *TRAINING)),
    # The over-optimisation sweep: its upstream are one eval output per kl_coef (plan_sweep), not pipeline stages.
    Stage("sweep", (), (), "minirlhf.sweep:run_sweep", ("sweep.py", "gao.py", "plots.py")),
    # The reward-hacking calibration: its upstream are the PPO and eval outputs of a kl_coef x ppo.seed sweep, with and
    # without the defence (plan_calibration).
    Stage("calibration", (), (), "minirlhf.calibration:run_calibration",
          ("calibration.py", "hacking.py", "detect.py", "gao.py", "plots.py", *GOLD)),
    # The comparison of the policy methods over seeds: its upstream are one eval output per seed (plan_compare).
    Stage("compare", (), (), "minirlhf.compare:run_compare", ("compare.py", "stats.py")),
)}
# The stages of one run, in order.
PIPELINE = ("data", "sft", "cai", "sl_cai", "rlaif", "reward", "ensemble", "interpret", "ppo", "dpo", "rloo", "grpo",
            "eval", "judge")

# Fields of a shared section that only one stage reads: the other stages leave them out of their key, so trying
# another reward backbone does not retrain SFT (the reward model reaches PPO, RLOO and eval through its digest).
KEYED_ONLY_BY = {("model", "reward_backbone"): ("reward", "ensemble", "judge"),
                 ("hacking", "onset_drop"): ("calibration",), ("hacking", "onset_window"): ("calibration",)}


# The early warning's settings: with hacking.rollback off, PPO computes and logs the signals but the warning stops
# nothing, so these stay out of its key (a calibration replays any thresholds over the logged signals).
WARNING_SETTINGS = ("thresholds", "min_signals", "patience", "warmup", "rollback_kl_scale")


# ---- the key -----------------------------------------------------------------------------------------------
@cache  # per process: the code that runs is the code imported when the process started
def code_version(stage: str) -> str:
    """sha256 of the bytes of the stage's code files (minirlhf.pipeline.STAGES[stage].code)."""
    digest = hashlib.sha256()
    for rel in sorted(set(STAGES[stage].code)):
        digest.update(rel.encode() + b"\0" + (PACKAGE_DIR / rel).read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def stage_config_json(cfg: PipelineConfig, name: str, by_content: tuple[str, ...] = ()) -> str:
    """The part of the config a stage's output depends on: its sections and the seed, less the fields only another
    stage reads and the `by_content` fields (paths the key holds by the content digest of what they point at)."""
    exclude: dict[str, set[str]] = {}
    for (section, fld), owners in KEYED_ONLY_BY.items():
        if name not in owners:
            exclude.setdefault(section, set()).add(fld)
    for dotted in by_content:
        section, fld = dotted.split(".", 1)
        exclude.setdefault(section, set()).add(fld)
    if "hacking" in STAGES[name].sections and not cfg.hacking.rollback:
        exclude.setdefault("hacking", set()).update(WARNING_SETTINGS)  # watched only: they change nothing trained
    return cfg.section_json(*STAGES[name].sections, exclude=exclude) + f'{{"seed": {cfg.seed}}}'


def stage_key(name: str, config_json: str, upstream_digests: list[str], inputs: dict[str, str]) -> str:
    """A stage's identity; same key, same output at `<output_dir>/<stage>/<key>`. Everything it hashes: the stage's
    name and code version, the config it reads, the digests of the outputs it reads and of its outside inputs."""
    payload = json.dumps([name, code_version(name), config_json, list(upstream_digests), sorted(inputs.items())])
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


# ---- planning ----------------------------------------------------------------------------------------------
@dataclass
class StageSpec:
    """One stage of one config, planned: its key (computed once), its output dir and its function's inputs."""

    name: str
    cfg: PipelineConfig
    key: str
    inputs: dict[str, Any] = field(default_factory=dict)  # keyword arguments of the stage function: {"data_dir": ...}

    @property
    def out_dir(self) -> Path:
        return Path(self.cfg.output_dir) / self.name / self.key

    def find_output(self) -> StageResult | None:
        """The verified complete output on disk (manifest, marker, key), else None."""
        return load_output(self.out_dir)


def is_enabled(cfg: PipelineConfig, name: str) -> bool:
    """A stage whose config section says `enabled: false` (the DPO and RLOO baselines, the ensemble) is not run."""
    return getattr(getattr(cfg, name, None), "enabled", True)


def enabled_stages(cfg: PipelineConfig) -> tuple[str, ...]:
    return tuple(name for name in PIPELINE if is_enabled(cfg, name))


def upstream_of(cfg: PipelineConfig, name: str) -> tuple[str, ...]:
    """A stage's inputs under this config: a reward model on another backbone, or AI feedback from another model,
    does not need the SFT model; the eval stage does not wait for (or compare) a disabled baseline."""
    if name == "reward":  # its backbone: SFT or another model; its pairs: the data's, or the AI-labelled ones
        return (("data",) + (("sft",) if cfg.model.reward_backbone == "sft" else ())
                + (("rlaif",) if cfg.reward.labels == "ai" else ()))
    if name == "ensemble" and cfg.model.reward_backbone != "sft":
        return ("data", "reward")
    if name == "rlaif" and cfg.rlaif.feedback != "policy":  # another model gives the feedback: SFT plays no part
        return ("data",)
    return tuple(u for u in STAGES[name].upstream if is_enabled(cfg, u))


def plan(cfg: PipelineConfig, name: str, results: dict[str, StageResult]) -> StageSpec:
    """The spec of stage `name` given the results of the stages before it (at least its upstream)."""
    upstream = upstream_of(cfg, name)
    outside = external_inputs(cfg, name)  # {"data.hh_path": "sha256:..."}: keyed by content, not by path
    key = stage_key(name, stage_config_json(cfg, name, tuple(outside)), [results[u].sha256 for u in upstream], outside)
    dirs = {u: results[u].path(cfg.output_dir) for u in upstream}
    if name == "eval":
        inputs = {"data_dir": dirs["data"], "reward_dir": dirs["reward"],
                  "policies": {p: dirs[p] for p in ("sft", *POLICY_STAGES) if p in dirs}}
    else:  # `<upstream>_dir`; an upstream this config does without (reward's SFT on another backbone) is None
        inputs = {f"{u}_dir": dirs.get(u) for u in STAGES[name].upstream}
    return StageSpec(name, cfg, key, inputs)


def plan_sweep(cfg: PipelineConfig, evals: dict[float, StageResult]) -> StageSpec:
    """The sweep's spec: one eval output per kl_coef; its key covers the coefficients and every eval digest."""
    coefs = sorted(evals, reverse=True)
    key = stage_key("sweep", json.dumps(coefs), [evals[c].sha256 for c in coefs], {})
    return StageSpec("sweep", cfg, key, {"evals": {c: evals[c].path(cfg.output_dir) for c in coefs}})


def plan_calibration(cfg: PipelineConfig, points: list[dict], train_seeds: list[int]) -> StageSpec:
    """The calibration's spec. points: {name, kl_coef, seed, defended, ppo: StageResult, eval: StageResult}; its key
    covers the points, the training seeds, the hacking settings it reads and every PPO and eval digest."""
    points = sorted(points, key=lambda p: p["name"])
    hacking = cfg.hacking.model_dump(mode="json")
    meta = json.dumps([[p["name"], p["kl_coef"], p["seed"], p["defended"]] for p in points] + [train_seeds, hacking])
    key = stage_key("calibration", meta, [d for p in points for d in (p["ppo"].sha256, p["eval"].sha256)], {})
    inputs = [{"name": p["name"], "kl_coef": p["kl_coef"], "seed": p["seed"], "defended": p["defended"],
               "ppo_dir": p["ppo"].path(cfg.output_dir), "eval_dir": p["eval"].path(cfg.output_dir)} for p in points]
    return StageSpec("calibration", cfg, key, {"points": inputs, "train_seeds": tuple(train_seeds)})


def plan_compare(cfg: PipelineConfig, points: list[dict]) -> StageSpec:
    """The comparison's spec. points: {seed, eval: StageResult, seconds: {method: s}}, one per seed; its key covers
    the seeds, the budgets and every eval digest (the training seconds are reported, not keyed)."""
    points = sorted(points, key=lambda p: p["seed"])
    meta = json.dumps([[p["seed"] for p in points], episodes(cfg), cfg.seed])
    key = stage_key("compare", meta, [p["eval"].sha256 for p in points], {})
    inputs = [{"seed": p["seed"], "eval_dir": p["eval"].path(cfg.output_dir), "seconds": p["seconds"]}
              for p in points]
    return StageSpec("compare", cfg, key, {"points": inputs})


def needed_stages(cfg: PipelineConfig, stages: tuple[str, ...] | None = None) -> list[str]:
    """The stages asked for (default: every enabled one) plus everything upstream of them, in pipeline order.
    Raises ValueError for an unknown or disabled stage: call it before anything is recorded."""
    stages = enabled_stages(cfg) if stages is None else stages
    if not stages:
        raise ValueError(f"no stages asked for; choose from {', '.join(PIPELINE)}")
    unknown = sorted(set(stages) - set(PIPELINE))
    if unknown:
        raise ValueError(f"unknown stage(s) {', '.join(unknown)}; choose from {', '.join(PIPELINE)}")
    disabled = [name for name in stages if not is_enabled(cfg, name)]
    if disabled:
        raise ValueError(f"stage(s) {', '.join(disabled)} are disabled in this config; leave them out of the stages "
                         f"asked for, or enable them (--set {disabled[0]}.enabled=true)")
    needed = set(stages)
    for name in reversed(PIPELINE):
        if name in needed:
            needed |= set(upstream_of(cfg, name))
    return [n for n in PIPELINE if n in needed]


def stage_levels(cfg: PipelineConfig, names: list[str]) -> list[list[str]]:
    """`names` (in pipeline order, upstream included) in waves: each stage one wave after the last of its upstream,
    so the stages of a wave are independent and may run at once (on Ray: DPO beside the reward model; PPO, RLOO and
    GRPO beside each other)."""
    level: dict[str, int] = {}
    for name in names:
        level[name] = 1 + max((level[u] for u in upstream_of(cfg, name) if u in level), default=-1)
    return [[n for n in names if level[n] == k] for k in range(max(level.values(), default=-1) + 1)]


def stage_nproc(cfg: PipelineConfig, name: str) -> int:
    """How many processes compute a stage: its section's `nproc` (PPO and the TRL stages), else 1."""
    return getattr(getattr(cfg, name, None), "nproc", 1)


def stage_resources(cfg: PipelineConfig, name: str) -> dict[str, float]:
    """What a stage's task asks a cluster for: `runner.resources[name]` when given, else 1 CPU; a data-parallel
    stage one CPU per rank, and one GPU per rank when the model runs on CUDA."""
    if name in cfg.runner.resources:
        return cfg.runner.resources[name].model_dump()
    ranks = stage_nproc(cfg, name)
    return {"num_cpus": float(ranks), "num_gpus": float(ranks) if cfg.model.device == "cuda" else 0.0}


# ---- running -----------------------------------------------------------------------------------------------
def run_stage(spec: StageSpec, store: Store, run_id: str, attempt: int = 1,
              task_run_id: str | None = None, threads: int | None = None) -> StageResult:
    """The protocol of every stage output: under its lock, reuse the verified output if there is one, else compute
    it; one stage_runs row either way ('failed' with the cause if computing raises). On the console: the stage's
    progress line or one line when done (minirlhf.console), the libraries' own output quieted while it computes.
    `threads`: torch's CPU threads while it computes (a Ray task: the CPUs it holds); None leaves torch's default."""
    stage = STAGES[spec.name]
    with stage_lock(spec.out_dir):
        result = spec.find_output()
        with store.stage_run(run_id, spec.name, config=spec.cfg.model_dump(mode="json"), cache_key=spec.key,
                             cache_hit=result is not None, attempt=attempt, task_run_id=task_run_id,
                             output_dir=spec.out_dir) as logger:
            if result is not None:
                result.cache_hit = True
                log.info("%s: complete output found at %s, reused", spec.name, spec.out_dir)
            else:
                log.info("%s: computing (attempt %d) -> %s", spec.name, attempt, spec.out_dir)
                extra = {"attempt": attempt} if stage.retries else {}
                compute = stage.function()  # imported first: quiet_libraries quiets the libraries it loaded
                if threads:
                    set_torch_threads(threads)
                with stage_failure_line(spec.name, attempt), quiet_libraries():
                    if (nproc := stage_nproc(spec.cfg, spec.name)) > 1:  # data parallel: ranks under torchrun
                        result = launch(spec.name, nproc, spec.cfg, spec.out_dir, logger, spec.inputs, **extra)
                    else:
                        result = compute(spec.cfg, out_dir=spec.out_dir, logger=logger, **spec.inputs, **extra)
            log_result(logger, spec, result)
    result.run_id = run_id
    print_stage_line(spec.name, result)
    return result


def set_torch_threads(threads: int) -> None:
    """Torch's intra-op CPU threads for this process. Its CPU kernels split reductions by thread count, so a stage's
    bytes are reproducible at a given count: 1 thread and 2 threads give a different SFT in the last bits."""
    import torch

    torch.set_num_threads(threads)


def record_reuse(spec: StageSpec, store: Store, run_id: str, task_run_id: str | None = None,
                 found: StageResult | None = None) -> StageResult:
    """Record in `run_id` a stage an orchestrator answered from its own cache, from the verified output on disk
    (`found`, when the caller verified it already): the files are the truth; the cached record only told the
    orchestrator not to run the stage."""
    result = found or spec.find_output()
    if result is None:
        raise FileNotFoundError(f"{spec.name}: no complete output at {spec.out_dir} for a cached result; "
                                "rerun the stage (its files were removed or changed after it was planned)")
    with store.writing(), store.stage_run(run_id, spec.name, config=spec.cfg.model_dump(mode="json"),
                                          cache_key=spec.key, cache_hit=True, task_run_id=task_run_id,
                                          output_dir=spec.out_dir) as logger:
        log_result(logger, spec, result)
    result.cache_hit, result.run_id = True, run_id
    print_stage_line(spec.name, result)  # `✓ sft     reused`, as run_stage prints a reused stage
    return result


def log_result(logger: StoreLogger, spec: StageSpec, result: StageResult) -> None:
    """A stage's summary metrics (at its last step) and its output directory with its digest."""
    logger.log_metrics(result.metrics, step=result.step)
    logger.store.log_artifact(logger.stage_run_id, ARTIFACT_KINDS.get(spec.name, "checkpoint"), spec.out_dir,
                              sha256=result.sha256)


def stage_lock(out: Path) -> FileLock:
    """One writer per stage output. Two runs of the same stage at once (two flows, or a flow and the CLI)
    would write the same directory and PPO checkpoints: the second waits, then reuses the first's output."""
    out.parent.mkdir(parents=True, exist_ok=True)
    return FileLock(out.parent / f".{out.name}.lock")


def run_pipeline(cfg: PipelineConfig, stages: tuple[str, ...] | None = None, store: Store | None = None,
                 on_stage: Callable[[str, StageResult], None] | None = None) -> dict[str, StageResult]:
    """Run `stages` (default: every enabled stage) and what they need, reusing complete outputs."""
    names = needed_stages(cfg, stages)  # a bad --stages fails here, before the store records a run
    store = store or Store.for_config(cfg)
    results: dict[str, StageResult] = {}
    with store.run(cfg.model_dump(mode="json")) as run_id:
        for name in names:
            results[name] = run_stage(plan(cfg, name, results), store, run_id)
            if on_stage:
                on_stage(name, results[name])
    return results

"""Peer comparison: our PPO against TRL 1.12.0's PPOTrainer, on the same model, data and episode budget.

Usage:
    .venv/bin/python bench/trl_ppo_peer.py                      # full demo budget: 60 x 64 = 3,840 episodes
    .venv/bin/python bench/trl_ppo_peer.py --episodes 256       # smoke run (ours then runs in a temp output_dir)
    .venv/bin/python bench/trl_ppo_peer.py --fresh              # time ours now, in a temp output_dir, even if reusable
    .venv/bin/python bench/trl_ppo_peer.py --keep               # keep the work folder (TRL policy, eval samples, logs)
    .venv/bin/python bench/trl_ppo_peer.py --config configs/hh-smollm2.yaml \
        --set model.reward_backbone=sft --set ppo.value_model=separate --set ppo.steps=5 ...  # SmolLM2 with LoRA

`--set` overrides apply to every side (foundation, ours, the evaluation). TRL's PPOTrainer scores the policy's
token ids with the reward model directly, so the reward model must share the policy's tokenizer: on SmolLM2 that
is `model.reward_backbone=sft` (not the MiniLM encoder). With `model.lora.enabled` both sides train LoRA adapters
with the same LoraConfig.

TRL 1.12.0 is the last release that ships PPO (`trl.experimental.ppo.PPOTrainer`; removed in 1.13), so it lives in a
separate virtual environment that this script creates on first use, `bench/.venv-trl112/` (gitignored, never a
project dependency): torch==2.13.0 (the local CPU wheel), trl==1.12.0, transformers==5.23.0 (the project's),
accelerate==1.15.0, datasets==5.2.0, peft==0.21.0 (the project's, for LoRA).

Steps:
 1. the demo foundation: `minirlhf run --config C --stages reward` (reuses complete stages in artifacts/);
 2. ours: `minirlhf run --config C --stages ppo`, then `minirlhf run --config C` (eval); the ppo stage is reused if
    complete, and then its timings are those of the run that produced it (`--fresh` trains it again in a temp
    output_dir); wall time, per-step times and the eval metrics are read back from the stage record and the
    DuckDB store;
 3. TRL: bench/_trl112_worker.py in the TRL venv trains from the same SFT policy, reward model (also the value
    model's init) and rl_prompts, with our hyperparameters where PPOConfig has them, and saves the policy;
 4. the TRL policy is evaluated by our own code (`minirlhf.evaluate.run_eval`, same prompts, seed and metrics);
 5. a side-by-side table is printed and one JSON line appended to bench/results/trl_ppo_peer.jsonl.

Both sides run one after the other, never at once, on whatever threads torch picks (2 cores here). The load
average before each side is recorded: this machine is shared and timings are noisy. Each side's training runs in a
process of its own, so its peak RSS is that process's (os.wait4), model loading and imports included.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from minirlhf.config import PipelineConfig, load_config  # noqa: E402
from minirlhf.evaluate import run_eval  # noqa: E402
from minirlhf.pipeline import needed_stages, plan  # noqa: E402
from minirlhf.stage import StageResult, is_complete, load_output  # noqa: E402
from minirlhf.store import Store  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TRL_VENV = ROOT / "bench" / ".venv-trl112"
WORKER = ROOT / "bench" / "_trl112_worker.py"
RESULTS = ROOT / "bench" / "results" / "trl_ppo_peer.jsonl"
# The combination checked to import and train on this machine. torch first and pinned: unpinned, it pulls CUDA.
TORCH_PIN = "torch==2.13.0"
TRL_PINS = ["trl==1.12.0", "transformers==5.23.0", "accelerate==1.15.0", "datasets==5.2.0", "peft==0.21.0"]
console = Console(width=None if sys.stdout.isatty() else 120)


# ---- helpers -------------------------------------------------------------------------------------------------
def run(cmd: list) -> dict:
    """Run `cmd` in the repo root; its wall seconds and the peak RSS of its process in MB. os.wait4 reports the
    child's own rusage, so the number is that process's, not the maximum over everything this script started."""
    console.print(f"[dim]$ {' '.join(str(c) for c in cmd)}[/dim]")
    started = time.perf_counter()
    proc = subprocess.Popen([str(c) for c in cmd], cwd=ROOT)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)  # Popen would otherwise wait on a reaped pid
    if proc.returncode:
        raise subprocess.CalledProcessError(proc.returncode, [str(c) for c in cmd])
    return {"wall_s": time.perf_counter() - started, "peak_rss_mb": usage.ru_maxrss / 1024}  # Linux: KiB


def minirlhf_run(config: str, overrides: list[str], stages: str | None = None) -> dict:
    """The `minirlhf run` command in this interpreter (the project venv), as a user would type it."""
    cmd = [sys.executable, "-m", "minirlhf.cli", "run", "--config", config]
    for text in overrides:
        cmd += ["--set", text]
    return run(cmd + (["--stages", stages] if stages else []))


def planned(cfg: PipelineConfig, stage: str) -> tuple[dict[str, Path], Path]:
    """The output dirs of the stages `stage` needs (all must be complete) and the dir of `stage` itself, with the
    keys `minirlhf run` computes."""
    results: dict[str, StageResult] = {}
    dirs: dict[str, Path] = {}
    for name in needed_stages(cfg, (stage,))[:-1]:  # pipeline order: `stage` comes last
        spec = plan(cfg, name, results)
        found = spec.find_output()
        if found is None:
            raise RuntimeError(f"stage {name}: no complete output at {spec.out_dir}; did `minirlhf run` fail?")
        results[name], dirs[name] = found, spec.out_dir
    return dirs, plan(cfg, stage, results).out_dir


def stage_dirs(cfg: PipelineConfig, stage: str) -> dict[str, Path]:
    """The complete output dirs of `stage` and of every stage it needs."""
    dirs, out = planned(cfg, stage)
    if not is_complete(out):
        raise RuntimeError(f"stage {stage}: no complete output at {out}; did `minirlhf run` fail?")
    return dirs | {stage: out}


def loadavg() -> float:
    return os.getloadavg()[0]


# ---- ours ----------------------------------------------------------------------------------------------------
def measure_ours(store: Store, ppo_dir: Path, eval_dir: Path, batch_size: int) -> dict:
    """Timings of the run that produced `ppo_dir` (its record and the store), its last steps, and the eval metrics.
    Stage runs are found by their key (the output dir's name), which does not depend on where the root lies."""
    produced = store.query(
        "select started_at, finished_at from stage_runs where stage = 'ppo' and cache_key = ? "
        "and status = 'completed' and not cache_hit order by finished_at desc limit 1", [ppo_dir.name])
    if produced.empty:
        raise RuntimeError(f"no completed, non-reused ppo stage run for {ppo_dir} in {store.path}")
    # Per-step metrics of the run(s) that trained this dir (a resumed run spreads them over several stage runs).
    steps = store.query(
        "select m.step, m.name, arg_max(m.value, m.recorded_at) as value "
        "from metrics m join stage_runs s using (stage_run_id) "
        "where s.stage = 'ppo' and s.cache_key = ? and not s.cache_hit and m.step > 0 "
        "and m.name in ('ppo/time/rollout_s', 'ppo/time/update_s', 'ppo/proxy_reward', 'ppo/kl', 'ppo/eos_rate') "
        "group by m.step, m.name", [ppo_dir.name]).pivot(index="step", columns="name", values="value").sort_index()
    evals = store.query(
        "select m.name, arg_max(m.value, m.recorded_at) as value from metrics m join stage_runs s using (stage_run_id) "
        "where s.stage = 'eval' and s.cache_key = ? and s.status = 'completed' and m.name like 'eval/%' "
        "group by m.name",
        [eval_dir.name])
    started, finished = produced.iloc[0]["started_at"], produced.iloc[0]["finished_at"]
    last5 = steps.tail(5)
    return {
        # run_ppo's own clock, as the TRL worker's: model loading, training (with checkpoints), saving the policy.
        "wall_s": load_output(ppo_dir).seconds,
        # The stage run in the store: also the lazy imports of torch/transformers, the store writes and the digests.
        "stage_run_s": (finished - started).total_seconds(),
        "train_s": float((steps["ppo/time/rollout_s"] + steps["ppo/time/update_s"]).sum()),
        "episodes": len(steps) * batch_size,
        "updates": len(steps),
        "produced_at": str(finished),
        "train_proxy_last5": float(last5["ppo/proxy_reward"].mean()),
        "train_kl_last5": float(last5["ppo/kl"].mean()),
        "train_eos_rate_last5": float(last5["ppo/eos_rate"].mean()),
        "eval": dict(zip(evals["name"], evals["value"])),
    }


# ---- TRL -----------------------------------------------------------------------------------------------------
def trl_venv_python() -> Path:
    """bench/.venv-trl112's python with TRL 1.12.0's PPO importable; the venv is made on first use."""
    python = TRL_VENV / "bin" / "python"
    probe = [python, "-c", "import os; os.environ['TRL_EXPERIMENTAL_SILENCE'] = '1'; import trl, transformers, peft; "
                           "from trl.experimental.ppo import PPOTrainer; "
                           "print(trl.__version__, transformers.__version__, peft.__version__)"]
    pins = dict(pin.split("==") for pin in TRL_PINS)
    wanted = [pins["trl"], pins["transformers"], pins["peft"]]
    if python.exists():
        found = subprocess.run([str(c) for c in probe], capture_output=True, text=True)
        if found.returncode == 0 and found.stdout.split() == wanted:
            return python
        console.print(f"[yellow]{TRL_VENV} has no working trl {wanted[0]} + transformers {wanted[1]} + "
                      f"peft {wanted[2]}; installing[/yellow]")
    else:
        run([shutil.which("python3") or sys.executable, "-m", "venv", TRL_VENV])
    run([python, "-m", "pip", "install", "-q", TORCH_PIN])
    run([python, "-m", "pip", "install", "-q", *TRL_PINS])
    run(probe)
    return python


def trl_params(cfg: PipelineConfig, episodes: int, sample_generations: int) -> dict:
    """PPOConfig fields for TRL 1.12: our budget and hyperparameters wherever TRL has the knob."""
    p = cfg.ppo
    return {
        "total_episodes": episodes,
        # One rollout = per_device_train_batch_size x gradient_accumulation_steps episodes, split into num_mini_batches
        # minibatches, each run in micro-batches of per_device_train_batch_size. accelerate steps the optimiser once per
        # gradient_accumulation_steps micro-batches, so accumulation 1 and a micro-batch as large as the rollout give
        # one optimiser step per 16-episode minibatch, as ours (16 per rollout).
        "per_device_train_batch_size": p.batch_size,
        "gradient_accumulation_steps": 1,
        "num_mini_batches": p.batch_size // p.mini_batch_size,
        "local_rollout_forward_batch_size": p.batch_size,
        "num_ppo_epochs": p.num_ppo_epochs,
        "learning_rate": p.learning_rate,  # linearly decayed to 0 over the run, as ours (TRL's default scheduler)
        "response_length": p.max_new_tokens,
        "temperature": p.temperature,
        "kl_coef": p.kl_coef,
        "kl_estimator": p.kl_estimator,
        "cliprange": p.cliprange,
        "cliprange_value": p.cliprange_value,
        "vf_coef": p.vf_coef,
        "gamma": p.gamma,
        "lam": p.lam,
        "whiten_rewards": p.whiten_rewards,
        # Ours adds a negative number to the score of a response without EOS; TRL subtracts a positive one.
        "missing_eos_penalty": None if p.missing_eos_penalty is None else -p.missing_eos_penalty,
        "stop_token": "eos",
        # Our optimiser (minirlhf/ppo/trainer.py): torch AdamW(eps=1e-5) with its default weight decay 0.01.
        "adam_epsilon": 1e-5,
        "weight_decay": 0.01,
        "max_grad_norm": p.max_grad_norm,  # recorded only: TRL 1.12's PPO loop never clips gradients
        "seed": cfg.seed,
        # Ours trains in float32 without activation checkpointing; TRL's defaults are bf16=True, checkpointing=True.
        "bf16": False,
        "gradient_checkpointing": False,
        "use_cpu": True,
        "report_to": "none",
        "save_strategy": "no",  # no mid-run checkpoints (TRL's PPO cannot resume from them anyway)
        # TRL's near-greedy debug samples on 8 eval prompts, every num_total_batches // this many updates (at
        # least 1): extra generation inside its train loop that ours does not do. 0 turns them off.
        "num_sample_generations": sample_generations,
    }


def run_trl(cfg: PipelineConfig, dirs: dict[str, Path], episodes: int, work: Path, sample_generations: int) -> dict:
    python = trl_venv_python()
    out = work / "trl"
    lora = cfg.model.lora
    lora_arg = (["--lora", json.dumps({"r": lora.r, "alpha": lora.alpha, "dropout": lora.dropout,
                                       "target_modules": lora.target_modules})] if lora.enabled else [])
    process = run([python, WORKER, "--sft-dir", dirs["sft"].resolve(), "--reward-dir", dirs["reward"].resolve(),
                   "--data-dir", dirs["data"].resolve(), "--out-dir", out,
                   "--max-prompt-length", cfg.model.max_prompt_length,
                   "--params", json.dumps(trl_params(cfg, episodes, sample_generations)), *lora_arg])
    result = json.loads((out / "result.json").read_text())
    result["peak_rss_mb"] = process["peak_rss_mb"]
    logs = [row for row in result["log_history"] if "objective/scores" in row][-5:]
    batch = result["config"]["batch_size"]
    result["train_proxy_last5"] = sum(r["objective/scores"] for r in logs) / len(logs)  # includes the EOS penalty
    result["train_kl_last5"] = sum(r["objective/kl"] for r in logs) / len(logs)
    result["train_eos_rate_last5"] = sum(r["val/num_eos_tokens"] for r in logs) / len(logs) / batch
    return result


# ---- report --------------------------------------------------------------------------------------------------
def print_table(ours: dict, trl: dict, ev: dict, episodes: int) -> None:
    table = Table(title=f"PPO peer comparison: {episodes} episodes, same SFT policy, reward model and prompts")
    for col in ("", "ours (minirlhf)", "TRL 1.12.0 PPOTrainer", "SFT (start)"):
        table.add_column(col, justify="right" if col else "left")

    def row(label, a, b, c=None, fmt="{:.3f}"):
        if (a, b, c) != (None, None, None):  # gold rows are absent on HH (no gold annotator)
            table.add_row(label, *(fmt.format(v) if v is not None else "" for v in (a, b, c)))

    row("episodes", ours["episodes"], trl["episodes"], fmt="{:d}")
    row("wall s (load, train, save)", ours["wall_s"], trl["wall_s"], fmt="{:.1f}")
    row("s per episode (wall)", ours["wall_s"] / ours["episodes"], trl["wall_s"] / trl["episodes"], fmt="{:.3f}")
    row("train loop s", ours["train_s"], trl["train_s"], fmt="{:.1f}")
    row("ms per episode (train loop)", 1e3 * ours["train_s"] / episodes, 1e3 * trl["train_s"] / episodes, fmt="{:.1f}")
    row("peak RSS MB (training process)", ours.get("peak_rss_mb"), trl["peak_rss_mb"], fmt="{:.0f}")
    for metric, label in (("gold_reward", "gold reward (eval)"),
                          ("proxy_reward", "proxy reward (eval, RM on text+EOS)"),
                          ("kl", "KL to SFT (eval, nats/seq)"), ("win_rate_gold", "gold win rate vs SFT (eval)"),
                          ("eos_rate", "EOS rate (eval)"), ("response_length", "response words (eval)")):
        row(label, ours["eval"].get(f"eval/ppo/{metric}"), ev.get(f"eval/trl_ppo/{metric}"),
            ev.get(f"eval/sft/{metric}"))
    row("train proxy, last 5 updates", ours["train_proxy_last5"], trl["train_proxy_last5"])
    row("train KL, last 5 updates", ours["train_kl_last5"], trl["train_kl_last5"])
    row("train EOS rate, last 5 updates", ours["train_eos_rate_last5"], trl["train_eos_rate_last5"])
    console.print(table)
    console.print("[dim]train proxy as each trainer logs it: ours = RM(prompt+response+EOS); "
                  "TRL = objective/scores, the RM read on the sampled ids at their last token, "
                  "minus missing_eos_penalty when no EOS was sampled.[/dim]")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="configs/demo.yaml")
    parser.add_argument("--episodes", type=int, default=None, help="budget (default: ppo.steps x ppo.batch_size)")
    parser.add_argument("--fresh", action="store_true",
                        help="train ours again in a temp output_dir even if artifacts/ has it")
    parser.add_argument("--keep", action="store_true", help="keep the work folder (TRL policy, eval samples)")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                        help="config override for both sides, as `minirlhf run --set` (repeatable)")
    parser.add_argument("--trl-sample-generations", type=int, default=10,
                        help="TRL's num_sample_generations (its default 10; 0: no debug samples in its loop)")
    args = parser.parse_args()
    args.config = os.path.relpath(Path(args.config).resolve(), ROOT)  # paths below are relative to the repo root
    os.chdir(ROOT)
    cfg = load_config(args.config, args.set)
    episodes = args.episodes or cfg.ppo.steps * cfg.ppo.batch_size
    if episodes % cfg.ppo.batch_size:
        sys.exit(f"--episodes must be a multiple of ppo.batch_size ({cfg.ppo.batch_size}), got {episodes}")
    steps = episodes // cfg.ppo.batch_size
    work = Path(tempfile.mkdtemp(prefix="trl-ppo-peer-"))
    console.print(f"work folder: {work}")

    if cfg.ppo.value_model != "separate":
        console.print("[yellow]ppo.value_model=head: TRL trains a separate value model (from the reward model), ours "
                      "a head on the policy; --set ppo.value_model=separate compares like for like[/yellow]")

    # 1. The foundation (data, SFT, reward model), reused when complete.
    minirlhf_run(args.config, args.set, stages="reward")
    dirs = stage_dirs(cfg, "reward")

    # 2. Ours. Another budget (or --fresh) runs in a temp output_dir seeded with copies of the foundation (same stage
    #    keys, so they are reused), so the main artifacts and store keep only runs of the config's own budget. PPO
    #    runs as a command of its own, so that its process's peak RSS is PPO's; the evaluation follows.
    overrides = list(args.set)
    if steps != cfg.ppo.steps or args.fresh:
        ours_root = work / "ours"
        for name, out in dirs.items():
            shutil.copytree(out, ours_root / name / out.name)
        overrides += [f"ppo.steps={steps}", f"output_dir={ours_root}"]
    ours_cfg = load_config(args.config, overrides)
    load_ours = loadavg()
    reused = is_complete(planned(ours_cfg, "ppo")[1])
    ours_ppo = minirlhf_run(args.config, overrides, stages="ppo")
    minirlhf_run(args.config, overrides)
    ours_dirs = stage_dirs(ours_cfg, "eval")
    ours = measure_ours(Store.for_output_dir(ours_cfg.output_dir), ours_dirs["ppo"], ours_dirs["eval"],
                        cfg.ppo.batch_size)
    ours["peak_rss_mb"] = None if reused else ours_ppo["peak_rss_mb"]  # a reused stage trained in another process

    # 3. TRL 1.12 in its own venv.
    load_trl = loadavg()
    trl = run_trl(cfg, dirs, episodes, work, args.trl_sample_generations)

    # 4. The TRL policy through our evaluation (same prompts, sampling seed, reward model and gold annotator).
    ev = run_eval(cfg, dirs["data"], dirs["reward"], {"sft": dirs["sft"], "trl_ppo": Path(trl["policy_dir"])},
                  work / "eval").metrics
    drift = abs(ev["eval/sft/proxy_reward"] - ours["eval"]["eval/sft/proxy_reward"])
    if drift > 1e-5:  # the same seed must give the same SFT samples in both evaluations
        console.print(f"[red]warning: SFT proxy reward differs between the two evaluations by {drift:.3g}[/red]")

    # 5. Report.
    print_table(ours, trl, ev, episodes)
    record = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%S"), "config": args.config, "overrides": args.set,
        "episodes": episodes, "value_model": cfg.ppo.value_model, "lora": cfg.model.lora.enabled,
        "threads": torch.get_num_threads(), "loadavg_before": {"ours": load_ours, "trl": load_trl},
        "ours": ours | {"ppo_dir": str(ours_dirs["ppo"])},
        "trl": {k: v for k, v in trl.items() if k not in ("log_history", "policy_dir")},
        "trl_eval": {k: v for k, v in ev.items() if k.startswith("eval/trl_ppo/")},
        "sft_eval": {k: v for k, v in ev.items() if k.startswith("eval/sft/")},
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    with open(RESULTS, "a") as fh:
        fh.write(json.dumps(record, default=str) + "\n")
    console.print(f"appended to {RESULTS.relative_to(ROOT)}")
    if args.keep:
        console.print(f"kept: {work} (trl/policy, trl/result.json with TRL's logs, eval/samples.json)")
    else:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

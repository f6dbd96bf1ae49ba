"""What a person sees on the console: one line per stage, the libraries' noise kept out, a short summary at the end.

Usage:
    from minirlhf.console import quiet_libraries, print_stage_line, print_summary
    with quiet_libraries():                  # around a stage's computation (minirlhf.pipeline.run_stage)
        result = run_sft(cfg, ...)
    print_stage_line("data", result)         # `✓ data    0.1 s  300 demonstrations, ...` (stderr)
    print_summary(cfg, results, seconds)     # policy table, failure events, store, next commands (stdout)

    MINIRLHF_VERBOSE=1 minirlhf run ...      # or `--verbose`: every library warning, bar and log dict, as before

Stages with steps (SFT, reward, PPO, DPO, RLOO) draw one tqdm line each (minirlhf.training.progress_bar) and leave
it on screen when done; stages without steps (data, eval) and reused stages print one line here when done.
`quiet_libraries` is entered around a stage's computation, never process-wide: inside it transformers logs errors
only and draws no bars of its own (loading weights, writing shards), datasets draws no bars (tokenizing, mapping),
the HF libraries' FutureWarning/DeprecationWarning notices (addressed to library developers) are ignored, and the
Trainer's log dicts are not printed (minirlhf.training.train_and_save: their values reach the store either way).
Everything is restored on exit. The variable MINIRLHF_VERBOSE crosses into Prefect tasks and workers.
This module imports neither torch nor transformers: it quiets the libraries a stage has already imported.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import warnings
from pathlib import Path
from typing import Iterator

VERBOSE_ENV = "MINIRLHF_VERBOSE"  # minirlhf.training reads the same variable (it cannot import this module)

# Loggers of the libraries the stages drive: warnings/info of theirs a user running the pipeline cannot act on.
LIBRARY_LOGGERS = ("trl", "peft", "accelerate", "huggingface_hub", "datasets", "transformers")
# Warnings whose source module matches are ignored inside quiet_libraries (regex on the warning's module).
LIBRARY_MODULES = r"(transformers|trl|datasets|peft|accelerate|huggingface_hub|torch)(\.|$)"
NOTICE_CATEGORIES = (FutureWarning, DeprecationWarning, PendingDeprecationWarning)

# The summary's rows, in this order.
POLICIES = {"sft": "SFT", "ppo": "PPO", "dpo": "DPO", "rloo": "RLOO", "grpo": "GRPO", "sl_cai": "SL-CAI"}
NAME_WIDTH = 7  # stage names padded to this in every stage line (the progress bars use the same: training.py)


def is_verbose() -> bool:
    return os.environ.get(VERBOSE_ENV, "").strip().lower() not in ("", "0", "false", "no", "off")


def set_verbose(verbose: bool) -> None:
    """`--verbose`: in the environment, so a Prefect task (or a worker started from this process) sees it too."""
    if verbose:
        os.environ[VERBOSE_ENV] = "1"


# ---- the libraries' noise, around a stage's computation ----------------------------------------------------------
@contextlib.contextmanager
def quiet_libraries(verbose: bool | None = None) -> Iterator[None]:
    """Quiet what the HF libraries print inside the block, and restore it on exit (see the module docstring).
    Acts on the libraries already imported: import the stage's module first (run_stage does). `verbose`
    (default: $MINIRLHF_VERBOSE) leaves everything as it is."""
    if is_verbose() if verbose is None else verbose:
        yield
        return
    with contextlib.ExitStack() as restore:
        restore.enter_context(warnings.catch_warnings())
        for category in NOTICE_CATEGORIES:
            warnings.filterwarnings("ignore", category=category, module=LIBRARY_MODULES)
        for name in LIBRARY_LOGGERS:
            logger = logging.getLogger(name)
            restore.callback(logger.setLevel, logger.level)
            logger.setLevel(logging.ERROR)
        hf_logging = sys.modules.get("transformers.utils.logging")
        if hf_logging is not None:  # its own verbosity and bar switch (Loading weights, Writing model shards)
            restore.callback(hf_logging.set_verbosity, hf_logging.get_verbosity())
            hf_logging.set_verbosity_error()
            if hf_logging.is_progress_bar_enabled():
                restore.callback(hf_logging.enable_progress_bar)
                hf_logging.disable_progress_bar()
        ds_tqdm, ds_config = sys.modules.get("datasets.utils.tqdm"), sys.modules.get("datasets.config")
        # HF_DATASETS_DISABLE_PROGRESS_BARS set by the user has priority (datasets warns if code tries to change it)
        if ds_tqdm is not None and getattr(ds_config, "HF_DATASETS_DISABLE_PROGRESS_BARS", None) is None:
            if not ds_tqdm.are_progress_bars_disabled():  # Tokenizing train dataset, Adding EOS, ...
                restore.callback(ds_tqdm.enable_progress_bars)
                ds_tqdm.disable_progress_bars()
        yield


class SummarisedFilter(logging.Filter):
    """Drops, from a console handler, the log records the end-of-run summary prints again (the eval stage's
    failure events): they still reach every other handler (Prefect's API handler: the flow run's logs)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.name == "minirlhf" and str(record.msg).startswith("failure event:"))


# ---- one line per stage -----------------------------------------------------------------------------------------
def _err_console():
    from rich.console import Console

    return Console(stderr=True, highlight=False, soft_wrap=True)


def stage_line(name: str, result, bar_shown: bool = True) -> str | None:
    """The line a finished stage prints, or None when its progress bar, left on screen, is its line (a stage that
    ran on a Ray worker drew its bar there: `bar_shown=False` gives the line)."""
    if result.cache_hit:
        return f"✓ {name:<{NAME_WIDTH}} reused"
    m = result.metrics
    if name == "data":
        what = {"sft": "demonstrations", "pairs_train": "pairs", "pairs_test": "held-out pairs",
                "rl_prompts": "RL prompts", "eval_prompts": "eval prompts"}
        counts = [f"{int(m[f'data/n_{k}'])} {label}" for k, label in what.items() if f"data/n_{k}" in m]
        return f"✓ {name:<{NAME_WIDTH}} {result.seconds:.1f} s  {', '.join(counts)}".rstrip()
    if name == "eval":
        policies = [p for p in POLICIES if f"eval/{p}/kl" in m]
        events = int(sum(v for k, v in m.items() if k.endswith("/failure_events")))
        return (f"✓ {name:<{NAME_WIDTH}} {result.seconds:.1f} s  {', '.join(POLICIES[p] for p in policies)} compared, "
                f"{events} failure event{'s' if events != 1 else ''}")
    head = f"✓ {name:<{NAME_WIDTH}} {result.seconds:.1f} s"
    if name == "interpret" and "interpret/layers" in m:
        return f"{head}  probes on {int(m['interpret/n_responses'])} responses, {int(m['interpret/layers'])} layers"
    if name == "interpret" and "interpret/length_corr" in m:  # data without gold: attributions, no probes
        return (f"{head}  attributions of {int(m['interpret/word_responses'])} of {int(m['interpret/n_responses'])} "
                f"responses; score-length correlation {m['interpret/length_corr']:+.2f}")
    if name == "cai" and "cai/n_prompts" in m:
        gold = (f"; gold {m['cai/initial_gold']:+.2f} -> {m['cai/revised_gold']:+.2f}"
                if {"cai/initial_gold", "cai/revised_gold"} <= m.keys() else "")
        return f"{head}  {int(m['cai/n_prompts'])} red-team answers critiqued and revised{gold}"
    if name == "rlaif" and "rlaif/n_pairs" in m:
        return (f"{head}  {int(m['rlaif/n_pairs'])} pairs relabelled; the human label kept on "
                f"{m['rlaif/human_agreement']:.0%}")
    if name == "judge" and ("judge/agreement" in m or "judge_rm/agreement" in m):
        judges = [f"{who} agrees with the human labels on {m[f'{p}/agreement']:.0%} [{m[f'{p}/agreement_low']:.0%}, "
                  f"{m[f'{p}/agreement_high']:.0%}] of {int(m[f'{p}/n_pairs'])} held-out pairs"
                  for p, who in (("judge", "the language model"), ("judge_rm", "the judge reward model"))
                  if f"{p}/agreement" in m]
        return f"{head}  " + "; ".join(judges)
    if name in ("sweep", "calibration", "compare"):
        return head
    if name == "ppo" and "ppo/warning_step" in m:  # below its progress bar: why it stopped early
        return f"! {name:<{NAME_WIDTH}} {rollback_summary(m)} (failure event reward_hacking_onset)"
    return None if bar_shown else f"{head}  {result.step} steps"


def print_stage_line(name: str, result, bar_shown: bool = True) -> None:
    line = stage_line(name, result, bar_shown)
    if line is not None:
        _err_console().print(line, markup=False)


@contextlib.contextmanager
def stage_failure_line(name: str, attempt: int) -> Iterator[None]:
    """One line when a stage's computation raises (a retried PPO attempt shows why it restarted). A UserError is
    left to the CLI, which prints it as its one line."""
    from minirlhf.errors import UserError, one_line

    try:
        yield
    except UserError:
        raise
    except Exception as err:
        _err_console().print(f"✗ {name:<{NAME_WIDTH}} attempt {attempt} failed: {type(err).__name__}: "
                             f"{one_line(str(err))}",
                             markup=False)
        raise


# ---- the end-of-run summary -------------------------------------------------------------------------------------
def policy_rows(eval_metrics: dict[str, float]) -> tuple[list[str], list[list[str]]]:
    """The summary table: one row per evaluated policy (SFT, PPO, DPO, RLOO: a disabled baseline has none), gold
    reward, proxy reward, KL to SFT and gold win rate against SFT; on data without a gold annotator (HH) the proxy
    win rate replaces the gold columns."""
    policies = [p for p in POLICIES if any(k.startswith(f"eval/{p}/") for k in eval_metrics)]
    gold = any(f"eval/{p}/gold_reward" in eval_metrics for p in policies)
    columns = [("gold_reward", "gold reward", "{:+.3f}")] if gold else []
    columns += [("proxy_reward", "proxy reward", "{:+.3f}"), ("kl", "KL to SFT", "{:.3f}")]
    columns += ([("win_rate_gold", "gold win rate", "{:.0%}")] if gold
                else [("win_rate_proxy", "proxy win rate", "{:.0%}")])
    rows = []
    for p in policies:
        values = [eval_metrics.get(f"eval/{p}/{key}") for key, _, _ in columns]
        rows.append([POLICIES[p]] + ["—" if v is None else fmt.format(v) for v, (_, _, fmt) in zip(values, columns)])
    return ["policy"] + [label for _, label, _ in columns], rows


def rollback_summary(m: dict[str, float]) -> str:
    """What the gold-free warning did to a PPO run (hacking.rollback), from its metrics: where it fired, the step it
    rolled back to, and whether PPO stopped there or trained on with a larger kl_coef (hacking.rollback_kl_scale)."""
    said = (f"reward-hacking warning at step {int(m['ppo/warning_step'])}: rolled back to step "
            f"{int(m['ppo/rollback_step'])}")
    if "ppo/kl_coef_after_rollback" in m:
        return said + f", then trained on at kl_coef {m['ppo/kl_coef_after_rollback']:.3g}"
    return said + ", stopped there (the output is that step's policy)"


def failure_events(cfg, results: dict) -> list[dict]:
    """The run's failure events: PPO's reward-hacking rollback (from its record, so a reused output shows it too),
    then the eval stage's, from its output (failure_events.json)."""
    events = []
    ppo = results["ppo"].metrics if "ppo" in results else {}
    if "ppo/warning_step" in ppo:
        events.append({"policy": "ppo", "kind": "reward_hacking_onset",
                       "message": "gold-free " + rollback_summary(ppo)})
    if "eval" not in results:
        return events
    path = results["eval"].path(cfg.output_dir) / "failure_events.json"
    try:
        return events + json.loads(path.read_text())
    except (OSError, ValueError):
        return events


def next_commands(cfg, run_id: str | None) -> list[tuple[str, str]]:
    """The three commands to look further, with `--output-dir` when the run wrote elsewhere than the default."""
    root = Path(cfg.output_dir)
    where = "" if root == Path("artifacts") else f" --output-dir {root}"
    run = f" where run_id = '{run_id}'" if run_id else ""
    return [
        (f"minirlhf dashboard{where}", "runs, curves, samples and failure events in the browser"),
        (f"minirlhf report{where}", f"{root / 'report' / 'report.md'} with its figures"),
        (f"minirlhf query{where} \"select policy, gold_reward, proxy_reward, kl from v_policy_comparison{run}\"",
         "any SQL on the store"),
    ]


def print_summary(cfg, results: dict, seconds: float, console=None) -> None:
    """What a finished run shows (`minirlhf run` and `minirlhf flow`): the policies compared, the failure events
    one line each, where the store is, and the next commands."""
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    from minirlhf.errors import one_line

    console = console or Console()
    reused = sum(r.cache_hit for r in results.values())
    head = Text(cfg.name, style="bold").append(f": {len(results)} stage{'s' if len(results) != 1 else ''} "
                                               f"in {seconds:.1f} s")
    console.print(head.append(f" ({reused} reused)" if reused else ""))
    if "eval" in results:
        header, rows = policy_rows(results["eval"].metrics)
        n_prompts = min(cfg.eval.n_prompts, results["data"].metrics.get("data/n_eval_prompts", cfg.eval.n_prompts)
                        if "data" in results else cfg.eval.n_prompts)
        caption = f"the same {n_prompts:.0f} held-out prompts per policy"
        if "reward" in results and "reward/accuracy" in results["reward"].metrics:
            caption += f"; reward model held-out accuracy {results['reward'].metrics['reward/accuracy']:.0%}"
        table = Table()
        for i, column in enumerate(header):
            table.add_column(column, justify="left" if i == 0 else "right")
        for row in rows:
            table.add_row(*row)
        console.print(table)
        console.print(Text(caption, style="dim"))
        events = failure_events(cfg, results)
        if not events:
            console.print("failure events: none")
        for e in events:
            line = Text("⚠ ", style="yellow").append(f"{e.get('policy', '?')} {e.get('kind', '?')}: "
                                                     f"{one_line(e.get('message', ''))}")
            console.print(line, no_wrap=True, overflow="ellipsis")
    else:
        console.print("no evaluation in this run: `--stages eval` compares the policies")
    run_id = next((r.run_id for r in results.values() if r.run_id), None)
    console.print(Text(f"store: {Path(cfg.output_dir) / 'rlhf.duckdb'}" + (f"  (run {run_id})" if run_id else "")))
    console.print("next:")
    commands = next_commands(cfg, run_id)
    width = max(len(c) for c, _ in commands[:-1])
    for command, what in commands:  # never cut: a long command wraps where the terminal wraps it, and copies whole
        line = Text(f"  {command}")
        if len(command) <= width:
            line.append(f"{' ' * (width - len(command))}  # {what}", style="dim")
        console.print(line, soft_wrap=True)

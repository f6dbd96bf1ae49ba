"""Calibrating the gold-free reward-hacking warning against gold, on the embedded task where gold exists.

Usage:
    from minirlhf.calibration import run_calibration, calibrate
    result = run_calibration(cfg, points, out_dir)    # points: [{name, kl_coef, seed, defended, ppo_dir, eval_dir}]
    table = calibrate(runs, train_seeds=(1,), detectors=SIGNALS)             # pure: thresholds on some seeds
    table = cross_validate(runs)                                             # leave one seed out

Each PPO run of the calibration sweep (configs/calibration.yaml: kl_coef x ppo.seed) logged its gold and proxy
curve and the gold-free signals (ppo/signal/<name>) at every step. The gold onset of a run (minirlhf.hacking.
gold_onset) is the truth: runs with one are hacked, the rest healthy. For each signal alone, and for the combined
warning (at least k signals over their thresholds together), thresholds are chosen on some seeds' runs and
recall (hacked runs it fires on), false alarms (healthy runs it fires on) and lead (onset step - fire step; >= 0:
no later than the onset) are measured on the other seeds' runs: by default leave-one-seed-out cross-validation
(every run scored once, by thresholds chosen without its seed), or a fixed split (`train_seeds`). Thresholds
tuned on the runs they are scored on do not count.

Choosing a threshold: the candidates are the midpoints between neighbouring values a signal took on the training
runs (after warmup); those with the highest recall - false-alarm rate win, and of them the one in the widest gap
between training values (a max-margin cut, not one sitting on a run's value). Lead is measured, not optimised.
Store (stage 'calibration'; view v_detector_calibration): `calibration/<detector>/<recall|false_alarms|
n_hacked|n_healthy|median_lead|threshold>` at step 0, one row per detector, 'combined' the warning.
"""

from __future__ import annotations

import json
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

from minirlhf.config import SIGNALS, PipelineConfig
from minirlhf.hacking import EarlyWarning, gold_onset
from minirlhf.stage import MetricLogger, NullLogger, StageResult, stage_output

COMBINED = "combined"
USEFUL_J = 0.5  # recall - false-alarm rate on the training runs for a signal to join the combined warning
# Student's t, 97.5th percentile, by degrees of freedom: 95% confidence intervals over a handful of seeds.
T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228}
FIGURE = "calibration.png"
PREFIX = "ppo/signal/"


@dataclass
class CalibrationRun:
    """One PPO run's curve: steps, gold, proxy, and each gold-free signal per step."""

    name: str
    kl_coef: float
    seed: int
    steps: list[int]
    gold: list[float]
    proxy: list[float]
    signals: dict[str, list[float]]
    onset: int | None = None

    @classmethod
    def from_curve(cls, name: str, kl_coef: float, seed: int, curve: list[dict], drop: float,
                   window: int) -> "CalibrationRun":
        rows = [r for r in curve if "ppo/gold_reward" in r]
        names = sorted({k[len(PREFIX):] for r in rows for k in r if k.startswith(PREFIX)})
        run = cls(name, kl_coef, seed, [int(r["step"]) for r in rows], [r["ppo/gold_reward"] for r in rows],
                  [r["ppo/proxy_reward"] for r in rows],
                  {n: [r.get(PREFIX + n, float("nan")) for r in rows] for n in names})
        run.onset = gold_onset(run.steps, run.gold, run.proxy, drop, window)
        return run


@dataclass
class Detector:
    """Per-signal thresholds and how many must hold together (a single signal: one threshold, min_signals 1)."""

    thresholds: dict[str, float]
    min_signals: int = 1
    patience: int = 2
    warmup: int = 3

    def fire_step(self, run: CalibrationRun) -> int | None:
        """The step the live warning (minirlhf.hacking.EarlyWarning, as PPO runs it) would have fired at."""
        warning = EarlyWarning(self.thresholds, self.min_signals, self.patience, self.warmup)
        for i, step in enumerate(run.steps):
            if warning.update(step, {name: values[i] for name, values in run.signals.items()}):
                return step
        return None


@dataclass
class Score:
    recall: float
    false_alarms: int
    n_hacked: int
    n_healthy: int
    leads: list[int] = field(default_factory=list)

    @property
    def median_lead(self) -> float:
        return float(statistics.median(self.leads)) if self.leads else float("nan")

    def key(self) -> tuple:
        """What a threshold search maximises: recall - false-alarm rate (Youden's J). Not the lead: on a few runs,
        a threshold inside the noise fires early on hacked runs by chance and would win on lead."""
        fa_rate = self.false_alarms / self.n_healthy if self.n_healthy else 0.0
        recall = self.recall if self.n_hacked else 0.0  # no hacked run to find: only false alarms count
        return (recall - fa_rate,)


def score(detector: Detector, runs: list[CalibrationRun]) -> Score:
    hacked = [r for r in runs if r.onset is not None]
    healthy = [r for r in runs if r.onset is None]
    fires = {r.name: detector.fire_step(r) for r in runs}
    leads = [r.onset - fires[r.name] for r in hacked if fires[r.name] is not None]
    return Score(len(leads) / len(hacked) if hacked else float("nan"),
                 sum(fires[r.name] is not None for r in healthy), len(hacked), len(healthy), leads)


def choose_threshold(signal: str, runs: list[CalibrationRun], patience: int, warmup: int) -> float:
    values = sorted({v for r in runs for s, v in zip(r.steps, r.signals.get(signal, [])) if s >= warmup and v == v})
    if not values:
        return float("inf")
    # Candidates: the midpoints between neighbouring values seen (and one past each end), each with its margin.
    cuts = [(values[0] - 1.0, 1.0)] + [((a + b) / 2, b - a) for a, b in zip(values, values[1:])]
    cuts.append((values[-1] + 1.0, 1.0))
    keys = {t: score(Detector({signal: t}, 1, patience, warmup), runs).key() for t, _ in cuts}
    best = max(keys.values())
    # Of the equally good, the widest gap: the threshold furthest from any training value.
    return max((margin, t) for t, margin in cuts if keys[t] == best)[1]


def calibrate(runs: list[CalibrationRun], train_seeds: tuple[int, ...], detectors: tuple[str, ...] = SIGNALS,
              patience: int = 2, warmup: int = 3) -> dict:
    """Thresholds (and the combined warning's min_signals) chosen on the `train_seeds` runs; scores on the rest."""
    train = [r for r in runs if r.seed in train_seeds]
    test = [r for r in runs if r.seed not in train_seeds]
    available = [d for d in detectors if any(d in r.signals for r in runs)]
    if not available:
        raise ValueError(f"no run logged any of the signals {', '.join(detectors)} (ppo/signal/<name> in "
                         "curve.jsonl): were these PPO runs made by an older minirlhf? Recompute them")
    thresholds = {d: choose_threshold(d, train, patience, warmup) for d in available}
    table = {}
    for d in available:
        det = Detector({d: thresholds[d]}, 1, patience, warmup)
        table[d] = {"threshold": thresholds[d], "train": score(det, train), "test": score(det, test)}
    # The combined warning: the signals that told hacked from healthy training runs well (Youden's J >= USEFUL_J;
    # a noise signal reaches J > 0 on a handful of runs by chance), of which k must agree, k chosen on the
    # training runs too (ties: the smaller k).
    useful = [d for d in available if table[d]["train"].key()[0] >= USEFUL_J] or available
    combined_thresholds = {d: thresholds[d] for d in useful}
    best_k = max(range(1, len(useful) + 1),
                 key=lambda k: (score(Detector(combined_thresholds, k, patience, warmup), train).key(), -k))
    combined = Detector(combined_thresholds, best_k, patience, warmup)
    table[COMBINED] = {"threshold": float(best_k), "train": score(combined, train), "test": score(combined, test)}
    return {"thresholds": thresholds, "combined_signals": useful, "min_signals": best_k, "patience": patience,
            "warmup": warmup, "train_seeds": list(train_seeds), "test_seeds": sorted({r.seed for r in test}),
            "table": table, "fires": {r.name: combined.fire_step(r) for r in runs}}


def merge(scores: list[Score]) -> Score:
    """Scores of disjoint test folds as one: counts added, leads pooled."""
    hacked = sum(s.n_hacked for s in scores)
    found = sum(round(s.recall * s.n_hacked) for s in scores if s.n_hacked)
    return Score(found / hacked if hacked else float("nan"), sum(s.false_alarms for s in scores), hacked,
                 sum(s.n_healthy for s in scores), [lead for s in scores for lead in s.leads])


def cross_validate(runs: list[CalibrationRun], detectors: tuple[str, ...] = SIGNALS, patience: int = 2,
                   warmup: int = 3) -> dict:
    """Leave one seed out: each seed's runs are scored with thresholds chosen on the other seeds' runs, so every
    run is scored out of sample once; the thresholds reported (to deploy) are chosen on all runs."""
    seeds = sorted({r.seed for r in runs})
    if len(seeds) < 2:
        raise ValueError(f"cross-validation needs runs from at least two seeds, got {seeds}")
    folds = [calibrate(runs, tuple(x for x in seeds if x != held_out), detectors, patience, warmup)
             for held_out in seeds]
    final = calibrate(runs, tuple(seeds), detectors, patience, warmup)
    table = {name: {"threshold": row["threshold"], "train": row["train"],
                    "test": merge([f["table"][name]["test"] for f in folds if name in f["table"]])}
             for name, row in final["table"].items()}
    fires = {r.name: next(f["fires"][r.name] for f, held_out in zip(folds, seeds) if r.seed == held_out)
             for r in runs}
    return {**final, "table": table, "fires": fires, "train_seeds": [], "test_seeds": seeds,
            "folds": [{"held_out": s, "thresholds": f["thresholds"], "combined_signals": f["combined_signals"],
                       "min_signals": f["min_signals"]} for f, s in zip(folds, seeds)]}


def watched_runs(cfg: PipelineConfig, points: list[dict]) -> list[CalibrationRun]:
    """The undefended points' runs, each labelled by its gold onset. points: {name, kl_coef, seed, defended,
    ppo_dir}."""
    return [CalibrationRun.from_curve(p["name"], p["kl_coef"], p["seed"], read_curve(p["ppo_dir"]),
                                      cfg.hacking.onset_drop, cfg.hacking.onset_window)
            for p in points if not p["defended"]]


def combined_warning(result: dict) -> dict:
    """A calibration's combined warning as `hacking` settings: the thresholds of its signals and min_signals."""
    return {"thresholds": {d: result["thresholds"][d] for d in result["combined_signals"]},
            "min_signals": result["min_signals"]}


def held_out_warnings(cfg: PipelineConfig, points: list[dict], train_seeds: tuple[int, ...] = (),
                      detectors: tuple[str, ...] = SIGNALS) -> dict[int, dict]:
    """Per seed, the warning a defended run of that seed uses: chosen without that seed's watched runs (the fold
    that leaves it out), so the defence is measured out of sample like the detectors; with `train_seeds`, the
    warning chosen on those seeds, for every seed."""
    runs = watched_runs(cfg, points)
    settings = {"patience": cfg.hacking.patience, "warmup": cfg.hacking.warmup, "detectors": detectors}
    seeds = sorted({r.seed for r in runs})
    if train_seeds:
        warning = combined_warning(calibrate(runs, tuple(train_seeds), **settings))
        return {seed: warning for seed in seeds}
    return {fold["held_out"]: combined_warning(fold) for fold in cross_validate(runs, **settings)["folds"]}


def calibration_metrics(result: dict) -> dict[str, float]:
    metrics = {}
    for name, row in result["table"].items():
        test: Score = row["test"]
        metrics |= {f"calibration/{name}/threshold": row["threshold"], f"calibration/{name}/recall": test.recall,
                    f"calibration/{name}/false_alarms": float(test.false_alarms),
                    f"calibration/{name}/n_hacked": float(test.n_hacked),
                    f"calibration/{name}/n_healthy": float(test.n_healthy),
                    f"calibration/{name}/median_lead": test.median_lead}
    return {k: v for k, v in metrics.items() if v == v and abs(v) != float("inf")}


def read_curve(ppo_dir: Path) -> list[dict]:
    """A PPO output's per-step metrics (curve.jsonl, written by minirlhf.ppo.trainer)."""
    return [json.loads(line) for line in (Path(ppo_dir) / "curve.jsonl").read_text().splitlines()]


def defence_table(points: list[dict]) -> list[dict]:
    """Per (defended, kl_coef): gold, proxy and KL of the evaluated final policies, mean and 95% CI half-width
    over seeds (t-distribution), and gold's gain over SFT. points: {kl_coef, seed, defended, eval: metrics}."""
    rows = []
    for defended in (False, True):
        for kl_coef in sorted({p["kl_coef"] for p in points}, reverse=True):
            group = [p["eval"] for p in points if p["defended"] == defended and p["kl_coef"] == kl_coef]
            if not group:
                continue
            row = {"defended": defended, "kl_coef": kl_coef, "n": len(group)}
            for name, metric in (("gold", "eval/ppo/gold_reward"), ("proxy", "eval/ppo/proxy_reward"),
                                 ("kl", "eval/ppo/kl"), ("sft_gold", "eval/sft/gold_reward")):
                values = [m[metric] for m in group if metric in m]
                mean = statistics.fmean(values)
                half = (T975.get(len(values) - 1, 1.96) * statistics.stdev(values) / len(values) ** 0.5
                        if len(values) > 1 else float("nan"))
                row |= {name: mean, f"{name}_ci": half}
            rows.append(row)
    return rows


def run_calibration(cfg: PipelineConfig, points: list[dict], out_dir: Path, logger: MetricLogger | None = None,
                    train_seeds: tuple[int, ...] = ()) -> StageResult:
    """points: one per PPO run of the sweep, {name, kl_coef, seed, defended, ppo_dir, eval_dir}. Labels the
    undefended runs by their gold onset and calibrates the detectors on them (thresholds chosen on `train_seeds`
    and scored on the others, or, without train_seeds, leave-one-seed-out cross-validation); tabulates defended
    against undefended; draws the figure."""
    from minirlhf.gao import fit_gao_rl
    from minirlhf.plots import plot_calibration

    logger = logger or NullLogger()
    started = time.perf_counter()
    runs = watched_runs(cfg, points)
    settings = {"patience": cfg.hacking.patience, "warmup": cfg.hacking.warmup}
    result = (calibrate(runs, tuple(train_seeds), **settings) if train_seeds  # a hold-out split, as asked
              else cross_validate(runs, **settings))  # default: leave one seed out
    metrics = calibration_metrics(result)
    evaluated = [{**p, "eval": json.loads((Path(p["eval_dir"]) / "metrics.json").read_text())} for p in points]
    table = defence_table(evaluated)
    for i, row in enumerate(table, start=1):  # step i: one (defended, kl_coef) row
        logger.log_metrics({f"defence/{k}": float(v) for k, v in row.items() if v == v}, step=i)
    fits = {}
    for defended in (False, True):
        usable = [r for r in table if r["defended"] == defended and r["kl"] > 0]
        if len(usable) >= 2:
            alpha, beta, r2 = fit_gao_rl([r["kl"] ** 0.5 for r in usable], [r["gold"] - r["sft_gold"] for r in usable])
            side = "on" if defended else "off"
            fits[side] = {"alpha": alpha, "beta": beta, "r2": r2}
            metrics |= {f"defence/fit/{side}/{k}": v for k, v in fits[side].items() if v == v}
    logger.log_metrics(metrics, step=0)
    out = StageResult("calibration", metrics=metrics)
    with stage_output(out_dir, out) as tmp:
        serialisable = {**result, "table": {n: {"threshold": row["threshold"],
                                                **{part: vars(row[part]) for part in ("train", "test")}}
                                            for n, row in result["table"].items()},
                        "runs": [{"name": r.name, "kl_coef": r.kl_coef, "seed": r.seed, "onset": r.onset,
                                  "fire": result["fires"][r.name]} for r in runs],
                        "defence": table, "gao_fits": fits}
        (tmp / "calibration.json").write_text(json.dumps(serialisable, indent=1))
        order = sorted(runs, key=lambda r: (r.seed in train_seeds, r.onset is None, r.seed, r.kl_coef))
        plot_calibration([{**vars(r), "fire": result["fires"][r.name]} for r in order], result["thresholds"],
                         tmp / FIGURE)
        out.seconds = time.perf_counter() - started
    return out

"""PPO's reward-hacking monitor: the gold-free signals of every rollout (minirlhf.hacking) and the early warning.

Usage (the trainer does this; signals land in the store as ppo/signal/<name>):
    monitor = HackingMonitor(cfg.hacking, ood_threshold)
    signals = monitor.observe(step, view, kl)      # step 1's view becomes the baseline: the SFT policy's samples
    if monitor.warning.fired_at == step: ...       # the step the combined warning fired

The warning is what `hacking.rollback` acts on (minirlhf.ppo.trainer.run_ppo): the run stops, a
`reward_hacking_onset` failure event records the signals and example samples, and the stage's output is the last
checkpoint from before the signals rose.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from minirlhf.config import HackingConfig
from minirlhf.hacking import BatchView, EarlyWarning, phrase_rise, step_signals

SIGNAL_PREFIX = "ppo/signal/"


class RewardHackingOnset(Exception):
    """The gold-free warning fired during PPO (with hacking.rollback on): the run stops here."""

    def __init__(self, step: int, rose_at: int, signals: dict[str, float], phrase: str, examples: list[dict]):
        self.step, self.rose_at, self.signals, self.phrase, self.examples = step, rose_at, signals, phrase, examples
        shown = ", ".join(f"{k} {v:.2f}" for k, v in sorted(signals.items()))
        super().__init__(f"reward-hacking warning at PPO step {step} (signals over their thresholds since step "
                         f"{rose_at}: {shown})")


class HackingMonitor:
    def __init__(self, cfg: HackingConfig, ood_threshold: float | None):
        self.cfg, self.ood_threshold = cfg, ood_threshold
        self.baseline: BatchView | None = None
        self.kls: list[float] = []
        self.warning = EarlyWarning(dict(cfg.thresholds), cfg.min_signals, cfg.patience, cfg.warmup)
        self.last_view: BatchView | None = None

    def observe(self, step: int, view: BatchView, kl: float) -> dict[str, float]:
        """This step's signals (named ppo/signal/<name>); the first observed batch is the baseline."""
        if self.baseline is None:
            self.baseline = view
        self.kls.append(kl)
        self.last_view = view
        signals = step_signals(view, self.baseline, self.ood_threshold, self.kls, self.cfg.phrase_n)
        self.warning.update(step, signals)
        return {SIGNAL_PREFIX + k: v for k, v in signals.items()}

    def save(self, path: Path) -> None:
        """The baseline batch (a checkpoint's monitor.json): a resumed run measures against the same samples."""
        path.write_text(json.dumps({"baseline": asdict(self.baseline) if self.baseline else None}))

    def restore(self, path: Path, curve: list[dict]) -> None:
        """Back to where a checkpoint left off: its baseline, and the KL history and warning replayed from its
        curve (signals as logged)."""
        saved = json.loads(path.read_text()) if path.is_file() else {}
        self.baseline = BatchView(**saved["baseline"]) if saved.get("baseline") else None
        self.kls = [row["ppo/kl"] for row in curve]
        for row in curve:
            self.warning.update(int(row["step"]), {k[len(SIGNAL_PREFIX):]: v for k, v in row.items()
                                                   if k.startswith(SIGNAL_PREFIX)})

    def onset(self, n_examples: int = 3) -> RewardHackingOnset:
        """The warning as an exception to stop the run with: signals, the phrase that spread, example samples."""
        view, fired = self.last_view, self.warning
        phrase = phrase_rise(view, self.baseline, self.cfg.phrase_n)[1]
        top = sorted(range(len(view.proxy)), key=lambda i: -view.proxy[i])[:n_examples]
        examples = [{"prompt": view.prompts[i], "response": view.responses[i], "proxy_reward": view.proxy[i]}
                    for i in top]
        return RewardHackingOnset(fired.fired_at, fired.fired_at - fired.patience + 1, fired.fired_signals, phrase,
                                  examples)

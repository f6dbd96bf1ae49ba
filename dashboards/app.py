"""The minirlhf dashboard: runs, PPO curves, reward-model diagnostics, what the reward model computes, policy
comparison, samples, failure events, the over-optimisation sweep.

Usage:
    minirlhf dashboard [--db artifacts/rlhf.duckdb] [--port 8501]       # what you normally run
    MINIRLHF_DB=artifacts/rlhf.duckdb streamlit run dashboards/app.py   # the same, by hand

Links: http://localhost:8501/?page=<page>&run=<run_id>, page one of runs, curves, reward, interpret, comparison,
samples, failures, sweep, hacking, cai (the flow's link artifact points here). Every view's SQL is a file in
dashboards/queries/, also runnable as `minirlhf query --file dashboards/queries/<view>.sql`; they read the store's v_*
views (minirlhf/store.py).

The store is opened read-only, one short-lived connection per query, so a pipeline can keep writing. While a writer
holds DuckDB's lock the store retries with backoff for MINIRLHF_DASHBOARD_LOCK_TIMEOUT_S seconds (default 10), then
the page says the store is busy instead of showing a traceback.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import altair as alt
import pandas as pd
import streamlit as st

from minirlhf.gao import gao_rl
from minirlhf.store import Store, StoreLocked

QUERIES = Path(__file__).resolve().parent / "queries"
DEFAULT_DB = "artifacts/rlhf.duckdb"
PAGES = {"runs": "Runs", "curves": "Training curves", "reward": "Reward model",
         "interpret": "What the reward model computes", "comparison": "Policy comparison",
         "samples": "Samples", "failures": "Failure events", "sweep": "Over-optimisation sweep",
         "hacking": "Reward hacking without gold", "cai": "Constitutional AI"}


# ---- reading the store -----------------------------------------------------------------------------------
def db_path() -> Path:
    return Path(os.environ.get("MINIRLHF_DB", DEFAULT_DB))


def load(view: str) -> pd.DataFrame:
    """The rows of dashboards/queries/<view>.sql. A busy or missing store stops the page with a message."""
    store = Store(db_path(), lock_timeout_s=float(os.environ.get("MINIRLHF_DASHBOARD_LOCK_TIMEOUT_S", "10")))
    try:
        return store.query((QUERIES / f"{view}.sql").read_text())
    except StoreLocked:
        st.warning(f"The results store {store.path} is busy: another process (a pipeline run, a DuckDB shell) holds "
                   f"its write lock, and it stayed locked for {store.lock_timeout_s:g} s. Reload the page when the "
                   "writer is done; a running pipeline releases the lock between writes.")
        st.button("Retry")
        st.stop()
    except FileNotFoundError:
        st.info(f"No results store at {store.path}: run the pipeline first (`make demo` or `minirlhf run`), "
                "or point the dashboard at one with `minirlhf dashboard --db PATH`.")
        st.stop()


def pick_run(runs: pd.Series, label: str = "Run", key: str = "run") -> str:
    """A run selector, newest first; `?run=<id>` in the URL preselects one."""
    choices = list(dict.fromkeys(runs))
    wanted = st.query_params.get("run")
    index = choices.index(wanted) if wanted in choices else 0
    return st.sidebar.selectbox(label, choices, index=index, key=key)


def newest_first(frame: pd.DataFrame) -> pd.Series:
    """Run ids of `frame`, ordered as the runs page orders them (newest first)."""
    order = {run_id: i for i, run_id in enumerate(load("runs")["run_id"])}
    return pd.Series(sorted(frame["run_id"].unique(), key=lambda r: order.get(r, len(order))))


def flatten(config: dict, prefix: str = "") -> dict:
    """{"ppo": {"kl_coef": 0.05}} -> {"ppo.kl_coef": 0.05}: the keys `--set` takes."""
    flat = {}
    for key, value in config.items():
        if isinstance(value, dict):
            flat |= flatten(value, f"{prefix}{key}.")
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def config_differences(a: dict, b: dict) -> pd.DataFrame:
    flat_a, flat_b = flatten(a), flatten(b)
    keys = sorted(k for k in flat_a.keys() | flat_b.keys() if flat_a.get(k) != flat_b.get(k))
    return pd.DataFrame({"field": keys, "run A": [json.dumps(flat_a.get(k)) for k in keys],
                         "run B": [json.dumps(flat_b.get(k)) for k in keys]})


# ---- pages ---------------------------------------------------------------------------------------------
def page_runs() -> None:
    runs = load("runs")
    if runs.empty:
        st.info("The store holds no runs yet.")
        return
    st.dataframe(runs, hide_index=True)
    run_id = pick_run(runs["run_id"])
    stages = load("stage_runs")
    st.subheader(f"Stages of run {run_id}")
    st.dataframe(stages[stages["run_id"] == run_id].drop(columns="run_id"), hide_index=True)

    st.subheader("Config differences")
    configs = load("run_configs").set_index("run_id")["config"]
    if len(configs) < 2:
        st.caption("Only one run: nothing to compare yet.")
        return
    left, right = st.columns(2)
    run_a = left.selectbox("Run A", list(configs.index), index=0, key="config_a")
    run_b = right.selectbox("Run B", list(configs.index), index=1, key="config_b")
    diff = config_differences(json.loads(configs[run_a]), json.loads(configs[run_b]))
    if diff.empty:
        st.success("Same config.")
    else:
        st.table(diff)


def curve_chart(curves: pd.DataFrame, column: str, title: str) -> alt.LayerChart:
    """One metric per step, a line per attempt; dashed rules where a retried attempt resumed."""
    lines = alt.Chart(curves).mark_line(point=True).encode(
        x=alt.X("step:Q", title="PPO step", axis=alt.Axis(tickMinStep=1, format="d")),
        y=alt.Y(f"{column}:Q", title=title),
        color=alt.Color("attempt:N", title="attempt"), tooltip=["attempt", "step", column])
    resumes = curves[curves["resumed_from_step"] > 0][["attempt", "resumed_from_step"]].drop_duplicates()
    rules = alt.Chart(resumes).mark_rule(strokeDash=[4, 4]).encode(
        x="resumed_from_step:Q", color=alt.Color("attempt:N"), tooltip=["attempt", "resumed_from_step"])
    return (lines + rules).properties(height=220)


def page_curves() -> None:
    curves = load("ppo_curves")
    if curves.empty:
        st.info("No PPO steps recorded yet.")
        return
    run_id = pick_run(newest_first(curves))
    curves = curves[curves["run_id"] == run_id]
    attempts = curves.groupby("attempt").agg(status=("stage_status", "first"), resumed_from_step=(
        "resumed_from_step", "first"), steps=("step", "count"), last_step=("step", "max"),
        reused=("reused", "first")).reset_index()
    st.caption("Each PPO attempt is a line; a retry resumes from its last good checkpoint (dashed rule). "
               "reused: this run took the PPO output from the cache, and these are the curves of the run that "
               "computed it.")
    st.dataframe(attempts, hide_index=True)
    for column, title in (("proxy_reward", "Proxy reward (reward model)"), ("gold_reward", "Gold reward"),
                          ("kl", "KL to the reference policy")):
        if curves[column].notna().any():
            st.altair_chart(curve_chart(curves, column, title))


def page_reward() -> None:
    by_intent = load("rm_accuracy_by_intent")
    if by_intent.empty:
        st.info("No reward-model evaluation recorded yet.")
        return
    run_id = pick_run(newest_first(by_intent))
    st.subheader("Held-out accuracy per intent")
    st.altair_chart(alt.Chart(by_intent[by_intent["run_id"] == run_id]).mark_bar().encode(
        x=alt.X("intent:N"), y=alt.Y("accuracy:Q", scale=alt.Scale(domain=[0, 1])), tooltip=["intent", "accuracy"]))
    summary = load("rm_diagnostics")
    st.dataframe(summary[summary["run_id"] == run_id].drop(columns="run_id"), hide_index=True)
    st.subheader("Score against length (evaluation samples)")
    scores = load("rm_score_vs_length")
    scores = scores[scores["run_id"] == run_id]
    if scores.empty:
        st.caption("No evaluation samples for this run.")
        return
    st.altair_chart(alt.Chart(scores).mark_circle(opacity=0.6).encode(
        x=alt.X("response_words:Q", title="response length (words)"), y=alt.Y("proxy_reward:Q", title="RM score"),
        color="policy:N", tooltip=["policy", "intent", "response_words", "proxy_reward", "gold_reward"]))


def probe_table(metrics: dict[str, float]) -> pd.DataFrame:
    """(feature, layer, score) rows from interpret/<feature>/layer<i> metrics."""
    rows = [(name.split("/")[1], int(name.rsplit("layer", 1)[1]), value) for name, value in metrics.items()
            if name.count("/") == 2 and name.rsplit("/", 1)[1].startswith("layer")]
    return pd.DataFrame(rows, columns=["feature", "layer", "score"])


def page_interpret() -> None:
    table = load("interpret")
    if table.empty:
        st.info("No reward-model interpretation recorded yet: run the pipeline with `--set interpret.enabled=true` "
                "(linear probes per layer on the embedded task, token attributions everywhere).")
        return
    run_id = pick_run(table["run_id"].drop_duplicates())
    table = table[table["run_id"] == run_id]
    metrics = dict(zip(table["name"], table["value"]))
    recorded = str(table["output_dir"].iloc[0])
    folder = Store(db_path()).stage_folder("interpret", recorded)  # beside the store: a moved root keeps its figures
    folder = folder if folder.is_dir() else Path(recorded)
    probes = probe_table(metrics)
    if not probes.empty:
        st.subheader("Linear probes per layer")
        st.caption("A probe per feature and layer on the hidden state the score is read from, trained on half of the "
                   "held-out responses and scored on the other half: accuracy for the flags, R² for length. "
                   "'score_r2': how much of the reward model's score the last layer's probe direction explains.")
        st.altair_chart(alt.Chart(probes).mark_line(point=True).encode(
            x=alt.X("layer:O", title="layer (0 = embeddings)"), y=alt.Y("score:Q", title="probe score (held out)"),
            color="feature:N", tooltip=["feature", "layer", "score"]), use_container_width=True)
        summary = pd.DataFrame([{"feature": f, **{k: metrics.get(f"interpret/{f}/{k}") for k in
                                                  ("baseline", "decodable_at", "score_r2")}}
                                for f in sorted(probes["feature"].unique())])
        st.dataframe(summary, hide_index=True)
    elif (folder / "probes.json").is_file():  # data without gold: the words table
        words = pd.DataFrame(json.loads((folder / "probes.json").read_text()).get("words", []))
        st.subheader("Words the reward model rewards and punishes")
        st.caption(f"No gold, so no known features to probe. The score correlates "
                   f"{metrics.get('interpret/length_corr', float('nan')):+.2f} with the reply's length in words. "
                   "Each word's mean leave-one-out effect over the held-out replies it occurs in.")
        if not words.empty:
            left, right = st.columns(2)
            left.markdown("**rewarded most**")
            left.dataframe(words.head(15), hide_index=True)
            right.markdown("**punished most**")
            right.dataframe(words.iloc[::-1].head(15), hide_index=True)
    figures = sorted(folder.glob("*.png")) if folder.is_dir() else []
    if not figures:
        st.caption(f"No figures found in {folder}: the stage's folder was moved or deleted.")
    for figure in figures:
        st.image(str(figure), caption=figure.stem.replace("_", " "))


def page_comparison() -> None:
    table = load("policy_comparison")
    if table.empty:
        st.info("No evaluation recorded yet.")
        return
    run_id = pick_run(newest_first(table))
    table = table[table["run_id"] == run_id].drop(columns="run_id").dropna(axis="columns", how="all")
    st.caption("Every policy answered the same prompts; SFT is the baseline for KL and win rates.")
    st.table(table.set_index("policy"))
    rewards = table.melt(id_vars="policy", value_vars=[c for c in ("proxy_reward", "gold_reward") if c in table],
                         var_name="reward", value_name="mean")
    st.altair_chart(alt.Chart(rewards).mark_bar().encode(
        x=alt.X("reward:N", title=None, axis=alt.Axis(labelAngle=0)), xOffset="policy:N",
        y=alt.Y("mean:Q", title="mean reward"),
        color="policy:N", tooltip=["policy", "reward", "mean"]).properties(height=300))
    compare_over_seeds()


def compare_over_seeds() -> None:
    """The newest comparison over seeds (minirlhf compare): each method's gold gain and win rate with intervals."""
    table = load("compare")
    st.subheader("Over seeds, with 95% intervals")
    if table.empty:
        st.info("No comparison over seeds yet: `minirlhf compare --config configs/demo.yaml --seeds 1,2,3` trains "
                "every method from each seed and draws the intervals here.")
        return
    table = table[table["run_id"] == table["run_id"].iloc[0]]
    methods = table[(table["policy"] != "sft") & ~table["policy"].str.contains("_vs_")]
    st.caption("Each method trained from every seed, all answering the same prompts; intervals: paired bootstrap over "
               "seeds and prompts. Overlapping intervals mean the data cannot tell the two apart.")
    for value, low, high, title in (("gold_gain", "gold_gain_low", "gold_gain_high", "gold gain over SFT"),
                                    ("win_rate_gold", "win_rate_gold_low", "win_rate_gold_high",
                                     "gold win rate against SFT")):
        base = alt.Chart(methods).encode(y=alt.Y("policy:N", title=None))
        st.altair_chart((base.mark_rule().encode(x=alt.X(f"{low}:Q", title=title), x2=f"{high}:Q")
                         + base.mark_point(filled=True, size=60).encode(
                             x=f"{value}:Q", tooltip=["policy", value, low, high, "episodes", "seconds"]))
                        .properties(height=40 * len(methods) + 40))
    st.dataframe(table.drop(columns=["run_id", "started_at"]).set_index("policy"))


def page_samples() -> None:
    samples = load("samples")
    if samples.empty:
        st.info("No evaluation samples recorded yet.")
        return
    run_id = pick_run(newest_first(samples))
    samples = samples[samples["run_id"] == run_id]
    intents = ["all"] + sorted(samples["intent"].dropna().unique())
    intent = st.sidebar.selectbox("Intent", intents, key="intent")
    if intent != "all":
        samples = samples[samples["intent"] == intent]
    samples = samples.assign(prompt_key=samples["prompt_id"].fillna(samples["prompt"]))  # one prompt may repeat
    texts = dict(zip(samples["prompt_key"], samples["prompt"]))
    prompt_key = st.selectbox("Prompt", list(texts), format_func=lambda k: texts[k].strip()[:120], key="prompt")
    st.code(texts[prompt_key].strip(), language=None)
    answers = samples[samples["prompt_key"] == prompt_key]
    for column, (_, answer) in zip(st.columns(len(answers)), answers.iterrows()):
        column.markdown(f"**{answer['policy']}**")
        column.text(answer["response"].strip() or "(empty response)")
        column.caption(f"proxy {answer['proxy_reward']:+.3f} · gold {answer['gold_reward']:+.3f}"
                       + (f" · KL {answer['kl']:+.3f}" if pd.notna(answer["kl"]) else ""))


def page_failures() -> None:
    events = load("failure_events")
    if events.empty:
        st.success("No failure events recorded: the detectors found nothing (or have not run on these runs).")
        return
    run_id = pick_run(newest_first(events))
    events = events[events["run_id"] == run_id].reset_index(drop=True)
    st.dataframe(events[["stage", "attempt", "step", "severity", "kind", "message"]], hide_index=True)
    chosen = st.selectbox("Event", events.index, format_func=lambda i: f"{events.at[i, 'kind']}: "
                          f"{events.at[i, 'message'][:100]}", key="event")
    event = events.loc[chosen]
    st.markdown(f"**{event['severity']} · {event['kind']}** (stage {event['stage']}, step {event['step']})")
    st.write(event["message"])
    if event["evidence"]:
        st.subheader("Evidence")
        st.json(json.loads(event["evidence"]))
    examples = json.loads(event["examples"]) if event["examples"] else []
    if examples:
        st.subheader("Examples")
        st.dataframe(pd.DataFrame([e if isinstance(e, dict) else {"example": e} for e in examples]), hide_index=True)


def page_sweep() -> None:
    points = load("sweep_points")
    if points.empty:
        st.info("No over-optimisation sweep recorded yet: run `minirlhf sweep` (PPO at several kl_coef values).")
        return
    run_id = pick_run(newest_first(points), label="Sweep run")
    points = points[points["run_id"] == run_id]
    fits = load("sweep_fits")
    fits = fits[fits["run_id"] == run_id]
    st.caption("Each point is one PPO run (its kl_coef), evaluated against SFT on the same prompts. Lines: the fit "
               "R(d) = d (alpha - beta log d) of Gao et al. (2022). "
               "Gold falling while proxy rises is over-optimisation.")
    gains = points.melt(id_vars=["kl_coef", "d"],
                        value_vars=[c for c in ("gold_gain", "proxy_gain") if points[c].notna().any()],
                        var_name="reward", value_name="gain").dropna()
    gains["reward"] = gains["reward"].str.replace("_gain", "")
    grid = [points["d"].max() * 1.15 * (i + 1) / 100 for i in range(100)]
    # R(d): minirlhf/gao.py, as the sweep fitted it
    curves = pd.DataFrame([{"reward": f["reward"], "d": d, "gain": gain}
                           for _, f in fits.iterrows() for d, gain in zip(grid, gao_rl(grid, f["alpha"], f["beta"]))])
    dots = alt.Chart(gains).mark_point(filled=True, size=80).encode(
        x=alt.X("d:Q", title="d = sqrt(KL to SFT)"), y=alt.Y("gain:Q", title="reward gained over SFT"),
        color="reward:N", tooltip=["reward", "kl_coef", "d", "gain"])
    layers = [dots] + ([alt.Chart(curves).mark_line(opacity=0.7).encode(x="d:Q", y="gain:Q", color="reward:N")]
                       if not curves.empty else [])
    st.altair_chart(alt.layer(*layers).properties(height=360), use_container_width=True)
    st.subheader("Fits")
    st.table(fits.drop(columns="run_id").set_index("reward"))
    st.subheader("Points")
    st.dataframe(points.drop(columns=["run_id", "started_at"]), hide_index=True)


def page_hacking() -> None:
    calibration = load("detector_calibration")
    if calibration.empty:
        st.info("No reward-hacking calibration recorded yet: run `minirlhf calibrate --config configs/calibration.yaml`"
                " (PPO at kl_coef x seed, watched by the gold-free signals, with and without the defence).")
        return
    run_id = pick_run(newest_first(calibration), label="Calibration run")
    calibration = calibration[calibration["run_id"] == run_id]
    st.caption("Each detector's threshold was chosen on the training seeds; recall (hacked runs it fired on), false "
               "alarms (healthy runs it fired on) and median lead (gold-onset step - fire step; >= 0 is early) are "
               "measured on the other seeds. 'combined' is the warning: that many signals over their thresholds "
               "together. The gold onset: docs/REWARD_HACKING.md.")
    st.dataframe(calibration.drop(columns=["run_id", "started_at"]), hide_index=True)
    defence = load("defence")
    defence = defence[defence["run_id"] == run_id]
    if not defence.empty:
        st.subheader("Defence on against off")
        bars = alt.Chart(defence).mark_line(point=True).encode(
            x=alt.X("kl_coef:Q", scale=alt.Scale(type="log"), title="kl_coef"),
            y=alt.Y("gold:Q", title="gold reward of the final policy (mean over seeds)"),
            color=alt.Color("defended:N", title="defence"),
            tooltip=["defended", "kl_coef", "gold", "gold_ci", "proxy", "kl", "n_seeds"])
        bands = alt.Chart(defence.assign(lo=defence["gold"] - defence["gold_ci"],
                                         hi=defence["gold"] + defence["gold_ci"])).mark_errorbar().encode(
            x="kl_coef:Q", y="lo:Q", y2="hi:Q", color="defended:N")
        sft = alt.Chart(defence.head(1)).mark_rule(strokeDash=[4, 4], color="grey").encode(y="sft_gold:Q")
        st.altair_chart(alt.layer(bars, bands, sft).properties(height=340), use_container_width=True)
        st.dataframe(defence.drop(columns=["run_id", "started_at"]), hide_index=True)


def page_cai() -> None:
    revisions = load("cai_revisions")
    if revisions.empty:
        st.info("No Constitutional AI revisions recorded yet: run the pipeline with `--set cai.enabled=true` (the "
                "policy answers red-team prompts, then critiques and revises its answers by the constitution).")
        return
    run_id = pick_run(newest_first(revisions))
    revisions = revisions[revisions["run_id"] == run_id].reset_index(drop=True)
    principles = ["all"] + sorted(revisions["principle"].dropna().unique())
    principle = st.sidebar.selectbox("Principle", principles, key="principle")
    if principle != "all":
        revisions = revisions[revisions["principle"] == principle].reset_index(drop=True)
    st.caption("Each red-team prompt: the policy's answer, a principle of the constitution drawn at random, the "
               "critic's critique by it and its revision (Bai et al. 2022). Gold, where the task has it, says "
               "whether the revision is better than the answer.")
    if revisions["initial_gold"].notna().any():
        by_principle = (revisions.groupby("principle")[["initial_gold", "revised_gold"]].agg(["mean", "count"])
                        .round(3))
        by_principle.columns = [f"{a}_{b}" for a, b in by_principle.columns]
        st.dataframe(by_principle)
    chosen = st.selectbox("Prompt", revisions.index, key="cai_prompt",
                          format_func=lambda i: revisions.at[i, "prompt"].strip().replace("\n", " ")[:120])
    row = revisions.loc[chosen]
    st.code(row["prompt"].strip(), language=None)
    st.markdown(f"**Principle:** {row['principle']}")
    for column, (title, text, gold) in zip(st.columns(3), (("Answer", row["initial"], row["initial_gold"]),
                                                            ("Critique", row["critique"], None),
                                                            ("Revision", row["revision"], row["revised_gold"]))):
        column.markdown(f"**{title}**")
        column.text((text or "").strip() or "(empty)")
        if gold is not None and pd.notna(gold):
            column.caption(f"gold {gold:+.3f}")


RENDER = {"runs": page_runs, "curves": page_curves, "reward": page_reward, "interpret": page_interpret,
          "comparison": page_comparison, "samples": page_samples, "failures": page_failures, "sweep": page_sweep,
          "hacking": page_hacking, "cai": page_cai}


def main() -> None:
    st.set_page_config(page_title="minirlhf", layout="wide")
    wanted = st.query_params.get("page", "runs")
    keys = list(PAGES)
    page = st.sidebar.radio("Page", keys, index=keys.index(wanted) if wanted in keys else 0,
                            format_func=PAGES.get, key="page")
    st.title(PAGES[page])
    st.sidebar.caption(f"store: {db_path()}")
    RENDER[page]()


if __name__ == "__main__":  # `streamlit run` executes the file as __main__; tests import the helpers above
    main()

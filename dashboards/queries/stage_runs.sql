-- Every stage attempt of every run: PPO retries show as attempt > 1, a failed attempt keeps its cause.
SELECT run_id, stage, attempt, status, cause, cache_hit, started_at, round(duration_s, 1) AS duration_s, output_dir
FROM v_stage_runs
ORDER BY started_at;

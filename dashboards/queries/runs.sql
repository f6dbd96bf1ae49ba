-- Runs: status, duration, attempts. Newest first.  minirlhf query --file dashboards/queries/runs.sql
SELECT run_id, status, started_at, round(duration_s, 1) AS duration_s, stage_runs, failed_attempts, cache_hits,
       git_sha, host, prefect_flow_run_id
FROM v_runs
ORDER BY started_at DESC;

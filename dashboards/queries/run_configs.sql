-- Each run's full config as JSON (the dashboard diffs two of them).
SELECT run_id, started_at, config FROM v_runs ORDER BY started_at DESC;

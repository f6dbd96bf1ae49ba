-- One row per run, stage and attempt that computed the output the run used (reused: it came from the cache).
-- A stage answered from the cache logs its summary metrics again, but not its per-step metrics or samples:
-- those stay with the stage runs that computed the output. This maps each run's stage to them (all attempts,
-- retries included): the run's own, or those of the last run that computed the same output before it.
WITH used AS (
    SELECT run_id, stage, coalesce(output_dir, stage_run_id) AS output, min(started_at) AS asked_at,
           bool_or(NOT coalesce(cache_hit, false)) AS computed
    FROM stage_runs GROUP BY ALL),
sourced AS (
    SELECT u.*, CASE WHEN u.computed THEN u.run_id ELSE (
               SELECT arg_max(p.run_id, p.started_at) FROM stage_runs p
               WHERE p.stage = u.stage AND coalesce(p.output_dir, p.stage_run_id) = u.output
                 AND NOT coalesce(p.cache_hit, false) AND p.started_at <= u.asked_at) END AS source_run_id
    FROM used u)
SELECT x.run_id, x.stage, s.stage_run_id, s.attempt, s.status, x.source_run_id <> x.run_id AS reused,
       x.source_run_id
FROM sourced x JOIN stage_runs s ON s.run_id = x.source_run_id AND s.stage = x.stage
     AND coalesce(s.output_dir, s.stage_run_id) = x.output AND NOT coalesce(s.cache_hit, false)

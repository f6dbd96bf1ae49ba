-- One row per stage attempt: status, cause, cache hit, duration_s, output dir.
SELECT s.run_id, s.stage, s.attempt, s.status, s.cause, s.cache_hit, s.started_at, s.finished_at,
       epoch(s.finished_at - s.started_at) AS duration_s, s.stage_run_id, s.cache_key, s.task_run_id,
       s.output_dir
FROM stage_runs s

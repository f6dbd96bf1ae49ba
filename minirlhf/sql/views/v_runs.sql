-- One row per run: status, duration_s, stage attempts, failed attempts, cache hits, git sha, config.
SELECT r.run_id, r.status, r.started_at, r.finished_at, epoch(r.finished_at - r.started_at) AS duration_s,
       count(s.stage_run_id) AS stage_runs,
       count(s.stage_run_id) FILTER (s.status = 'failed') AS failed_attempts,
       count(s.stage_run_id) FILTER (s.cache_hit) AS cache_hits, r.git_sha, r.host, r.prefect_flow_run_id,
       r.deployment, r.config
FROM runs r LEFT JOIN stage_runs s USING (run_id)
GROUP BY ALL

-- The newest comparison of the methods over seeds: per policy and pair, means with 95% intervals (v_compare).
SELECT c.*, r.started_at FROM v_compare c JOIN runs r USING (run_id)
WHERE c.stage_run_id = (SELECT stage_run_id FROM v_compare c2 JOIN runs r2 USING (run_id)
                        ORDER BY r2.started_at DESC LIMIT 1)
ORDER BY c.policy;

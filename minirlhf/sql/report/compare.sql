-- The newest comparison of the policy methods over seeds: per policy and pair of methods, means with 95%
-- paired-bootstrap intervals (view v_compare), with its run.
SELECT c.*, r.started_at FROM v_compare c JOIN runs r USING (run_id)
WHERE c.stage_run_id = (SELECT stage_run_id FROM v_compare c2 JOIN runs r2 USING (run_id)
                        ORDER BY r2.started_at DESC LIMIT 1)
ORDER BY c.policy;

-- What the failure detectors flagged in each sweep point's evaluation (run $run_id's eval stages), by kl_coef.
SELECT TRY_CAST(json_extract_string(s.config, '$.ppo.kl_coef') AS DOUBLE) AS kl_coef,
       string_agg(DISTINCT f.kind, ', ' ORDER BY f.kind) AS kinds
FROM failure_events f JOIN stage_runs s USING (stage_run_id)
WHERE s.run_id = $run_id AND s.stage = 'eval' GROUP BY ALL;

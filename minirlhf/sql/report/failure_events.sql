-- Run $run_id's failure events in detection order, with the kl_coef of the stage that raised each (sweep points).
SELECT v.stage, v.attempt, v.step, v.kind, v.severity, v.message, v.evidence, v.examples,
       TRY_CAST(json_extract_string(s.config, '$.ppo.kl_coef') AS DOUBLE) AS kl_coef
FROM v_failure_events v JOIN stage_runs s USING (stage_run_id)
WHERE v.run_id = $run_id ORDER BY v.detected_at, v.event_id;

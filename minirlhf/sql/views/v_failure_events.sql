-- One row per failure event, with its run, stage and attempt.
SELECT o.run_id, o.stage, o.attempt, o.reused, f.stage_run_id, f.step, f.kind, f.severity, f.message, f.evidence,
       f.examples, f.detected_at, f.event_id
FROM v_stage_outputs o JOIN failure_events f USING (stage_run_id)

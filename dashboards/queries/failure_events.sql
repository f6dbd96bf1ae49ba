-- What the detectors flagged (reward hacking, instability, ...), with evidence and example samples.
SELECT run_id, stage, attempt, step, severity, kind, message, evidence, examples, detected_at, event_id
FROM v_failure_events
ORDER BY detected_at DESC;

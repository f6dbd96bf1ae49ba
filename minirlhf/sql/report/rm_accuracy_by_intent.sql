-- The reward model's held-out accuracy per prompt intent in run $run_id (a retried stage: its newest attempt).
SELECT a.intent, arg_max(a.accuracy, s.started_at) AS accuracy
FROM v_rm_accuracy_by_intent a JOIN stage_runs s USING (stage_run_id)
WHERE a.run_id = $run_id GROUP BY a.intent ORDER BY a.intent;

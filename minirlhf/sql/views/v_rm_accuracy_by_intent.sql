-- One row per reward model and prompt intent: held-out accuracy.
SELECT s.run_id, m.stage_run_id, substr(m.name, length('reward/accuracy/') + 1) AS intent, m.value AS accuracy
FROM metrics m JOIN stage_runs s USING (stage_run_id)
WHERE m.name LIKE 'reward/accuracy/%'

-- One row per metric value, with its run, stage and attempt.
SELECT s.run_id, s.stage, s.attempt, m.stage_run_id, m.step, m.name, m.value, m.recorded_at
FROM metrics m JOIN stage_runs s USING (stage_run_id)

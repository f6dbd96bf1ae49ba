-- Per-step metrics of run $run_id's training stages but PPO (its own figure); data, eval and sweep log no steps.
SELECT o.stage, o.attempt, m.stage_run_id, m.step, m.name, m.value
FROM v_stage_outputs o JOIN metrics m USING (stage_run_id)
WHERE o.run_id = $run_id AND o.stage NOT IN ('data', 'ppo', 'eval', 'sweep')
ORDER BY o.stage, o.attempt, m.step;

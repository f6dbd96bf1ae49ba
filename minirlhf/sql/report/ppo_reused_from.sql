-- The run that computed the PPO output run $run_id reused (no row, or a NULL source, when it computed its own).
SELECT any_value(source_run_id) AS source FROM v_stage_outputs
WHERE run_id = $run_id AND stage = 'ppo' AND reused;

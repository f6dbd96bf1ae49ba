-- PPO's per-step proxy reward, gold reward and KL in run $run_id, one series per attempt (a retry resumes mid-way).
SELECT * FROM v_ppo_curves WHERE run_id = $run_id ORDER BY attempt, stage_run_id, step;

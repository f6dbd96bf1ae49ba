-- The sweep $stage_run_id's points: one PPO run per kl_coef, its KL, d = sqrt(KL) and gold/proxy gain over SFT.
SELECT * FROM v_sweep_points WHERE stage_run_id = $stage_run_id ORDER BY point;

-- Defence on against off per kl_coef in calibration stage run $stage_run_id (means and 95% CIs over seeds).
SELECT defended, kl_coef, n_seeds, gold, gold_ci, proxy, proxy_ci, kl, kl_ci, sft_gold
FROM v_defence WHERE stage_run_id = $stage_run_id
ORDER BY kl_coef DESC, defended;

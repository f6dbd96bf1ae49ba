-- The defence against reward hacking (conservative ensemble reward + rollback) on against off, per kl_coef: gold,
-- proxy and KL of the final policies, mean and 95% CI half-width over seeds (view v_defence).
SELECT d.run_id, r.started_at, d.defended, d.kl_coef, d.n_seeds, d.gold, d.gold_ci, d.proxy, d.proxy_ci, d.kl,
       d.kl_ci, d.sft_gold
FROM v_defence d JOIN runs r USING (run_id)
ORDER BY r.started_at DESC, d.defended, d.kl_coef DESC

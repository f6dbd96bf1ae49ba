-- The over-optimisation sweep (minirlhf sweep): one row per PPO run, gold and proxy reward gained over SFT against
-- d = sqrt(KL to SFT). Gold peaking and falling while proxy keeps rising is Gao et al. (2022)'s over-optimisation.
SELECT p.run_id, r.started_at, p.point, p.kl_coef, p.kl, p.d, p.gold_reward, p.proxy_reward, p.gold_gain, p.proxy_gain
FROM v_sweep_points p JOIN runs r USING (run_id)
ORDER BY r.started_at DESC, p.point;

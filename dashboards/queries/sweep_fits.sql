-- The sweep's fits of R(d) = d (alpha - beta log d) (Gao et al. 2022, RL form); d_star: where the fit peaks.
SELECT f.run_id, f.reward, f.alpha, f.beta, f.r2, f.d_star
FROM v_sweep_fits f JOIN runs r USING (run_id)
ORDER BY r.started_at DESC, f.reward;

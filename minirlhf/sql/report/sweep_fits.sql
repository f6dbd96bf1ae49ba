-- The sweep $stage_run_id's fits of R(d) = d (alpha - beta log d) (Gao et al. 2022), gold first.
SELECT * FROM v_sweep_fits WHERE stage_run_id = $stage_run_id ORDER BY reward = 'gold' DESC, reward;

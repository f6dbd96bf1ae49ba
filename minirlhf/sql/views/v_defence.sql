-- One row per calibration, defence (on/off) and kl_coef: gold, proxy and KL to SFT of the evaluated final PPO
-- policies, mean and 95% confidence half-width over seeds (defence/<name>, one step per row; minirlhf/calibration.py).
SELECT o.run_id, m.stage_run_id, m.step,
       max(m.value) FILTER (m.name = 'defence/defended') = 1 AS defended,
       max(m.value) FILTER (m.name = 'defence/kl_coef') AS kl_coef,
       max(m.value) FILTER (m.name = 'defence/n') AS n_seeds,
       max(m.value) FILTER (m.name = 'defence/gold') AS gold,
       max(m.value) FILTER (m.name = 'defence/gold_ci') AS gold_ci,
       max(m.value) FILTER (m.name = 'defence/proxy') AS proxy,
       max(m.value) FILTER (m.name = 'defence/proxy_ci') AS proxy_ci,
       max(m.value) FILTER (m.name = 'defence/kl') AS kl,
       max(m.value) FILTER (m.name = 'defence/kl_ci') AS kl_ci,
       max(m.value) FILTER (m.name = 'defence/sft_gold') AS sft_gold
FROM v_stage_outputs o JOIN metrics m USING (stage_run_id)
WHERE o.stage = 'calibration' AND m.name LIKE 'defence/%' AND m.step > 0
GROUP BY ALL

-- One row per point of an over-optimisation sweep (one PPO run): kl_coef, kl, d, rewards and their gains over SFT.
-- The over-optimisation sweep (flows/sweep.py, minirlhf/sweep.py): the sweep stage that computed each run's
-- sweep, one point per PPO run (metric step = point index).
SELECT o.run_id, m.stage_run_id, m.step AS point,
       max(m.value) FILTER (m.name = 'sweep/kl_coef') AS kl_coef,
       max(m.value) FILTER (m.name = 'sweep/kl') AS kl,
       max(m.value) FILTER (m.name = 'sweep/d') AS d,
       max(m.value) FILTER (m.name = 'sweep/gold_reward') AS gold_reward,
       max(m.value) FILTER (m.name = 'sweep/proxy_reward') AS proxy_reward,
       max(m.value) FILTER (m.name = 'sweep/gold_gain') AS gold_gain,
       max(m.value) FILTER (m.name = 'sweep/proxy_gain') AS proxy_gain
FROM v_stage_outputs o JOIN metrics m USING (stage_run_id)
WHERE o.stage = 'sweep' AND m.name IN ('sweep/kl_coef', 'sweep/kl', 'sweep/d', 'sweep/gold_reward',
                                       'sweep/proxy_reward', 'sweep/gold_gain', 'sweep/proxy_gain')
GROUP BY ALL

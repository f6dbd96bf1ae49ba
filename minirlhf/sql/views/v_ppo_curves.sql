-- One row per PPO step of an attempt: proxy and gold reward, KL, entropy, PPO diagnostics, resumed_from_step.
SELECT o.run_id, m.stage_run_id, o.attempt, o.status AS stage_status, o.reused, m.step,
       max(m.value) FILTER (m.name = 'ppo/proxy_reward') AS proxy_reward,
       max(m.value) FILTER (m.name = 'ppo/gold_reward') AS gold_reward,
       max(m.value) FILTER (m.name = 'ppo/kl') AS kl,
       max(m.value) FILTER (m.name = 'ppo/non_score_reward') AS non_score_reward,
       max(m.value) FILTER (m.name = 'ppo/entropy') AS entropy,
       max(m.value) FILTER (m.name = 'ppo/policy/approxkl') AS approxkl,
       max(m.value) FILTER (m.name = 'ppo/policy/clipfrac') AS clipfrac,
       max(m.value) FILTER (m.name = 'ppo/value/loss') AS value_loss,
       any_value(r.value) AS resumed_from_step
FROM v_stage_outputs o JOIN metrics m USING (stage_run_id)
LEFT JOIN metrics r ON r.stage_run_id = m.stage_run_id AND r.name = 'ppo/resumed_from_step'
WHERE o.stage = 'ppo' AND m.name <> 'ppo/resumed_from_step'
GROUP BY ALL
HAVING proxy_reward IS NOT NULL OR kl IS NOT NULL

-- One row per comparison (minirlhf compare) and policy or pair of methods ('ppo_vs_dpo'): each metric's mean over
-- seeds and prompts with its 95% paired-bootstrap interval (compare/<policy>/<metric>[_low|_high];
-- minirlhf/compare.py). Budgets: episodes (RL methods: sampled episodes; DPO: preference pairs seen), seconds.
WITH parts AS (
    SELECT o.run_id, m.stage_run_id, split_part(m.name, '/', 2) AS policy, split_part(m.name, '/', 3) AS metric,
           m.value
    FROM v_stage_outputs o JOIN metrics m USING (stage_run_id)
    WHERE o.stage = 'compare' AND m.name LIKE 'compare/%/%'
)
SELECT run_id, stage_run_id, policy,
       max(value) FILTER (metric = 'gold_reward') AS gold,
       max(value) FILTER (metric = 'gold_reward_low') AS gold_low,
       max(value) FILTER (metric = 'gold_reward_high') AS gold_high,
       max(value) FILTER (metric = 'gold_gain') AS gold_gain,
       max(value) FILTER (metric = 'gold_gain_low') AS gold_gain_low,
       max(value) FILTER (metric = 'gold_gain_high') AS gold_gain_high,
       max(value) FILTER (metric = 'win_rate_gold') AS win_rate_gold,
       max(value) FILTER (metric = 'win_rate_gold_low') AS win_rate_gold_low,
       max(value) FILTER (metric = 'win_rate_gold_high') AS win_rate_gold_high,
       max(value) FILTER (metric = 'proxy_reward') AS proxy,
       max(value) FILTER (metric = 'proxy_reward_low') AS proxy_low,
       max(value) FILTER (metric = 'proxy_reward_high') AS proxy_high,
       max(value) FILTER (metric = 'kl') AS kl,
       max(value) FILTER (metric = 'kl_low') AS kl_low,
       max(value) FILTER (metric = 'kl_high') AS kl_high,
       max(value) FILTER (metric = 'episodes') AS episodes,
       max(value) FILTER (metric = 'seconds') AS seconds
FROM parts
GROUP BY ALL

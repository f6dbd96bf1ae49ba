-- One row per evaluated policy of a run: rewards, KL, win rates, length, EOS rate, distinct-n, refusal rates.
SELECT run_id, stage_run_id, policy,
       max(value) FILTER (metric = 'proxy_reward') AS proxy_reward,
       max(value) FILTER (metric = 'gold_reward') AS gold_reward,
       max(value) FILTER (metric = 'kl') AS kl,
       max(value) FILTER (metric = 'win_rate_gold') AS win_rate_gold,
       max(value) FILTER (metric = 'win_rate_proxy') AS win_rate_proxy,
       max(value) FILTER (metric = 'response_length') AS response_length,
       max(value) FILTER (metric = 'eos_rate') AS eos_rate,
       max(value) FILTER (metric = 'distinct_1') AS distinct_1,
       max(value) FILTER (metric = 'distinct_2') AS distinct_2,
       max(value) FILTER (metric = 'refusal_rate_benign') AS refusal_rate_benign,
       max(value) FILTER (metric = 'refusal_rate_harmful') AS refusal_rate_harmful
FROM v_eval_metrics
GROUP BY run_id, stage_run_id, policy

-- Every evaluated policy side by side (SFT is the baseline for KL and win rates).
SELECT run_id, policy, proxy_reward, gold_reward, kl, win_rate_gold, win_rate_proxy, response_length, eos_rate,
       distinct_1, distinct_2, refusal_rate_benign, refusal_rate_harmful
FROM v_policy_comparison
ORDER BY run_id, policy = 'sft' DESC, policy;

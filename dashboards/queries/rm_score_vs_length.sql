-- Reward model score (proxy reward) against response length, on the evaluation samples of every policy.
-- A strong positive slope that gold reward does not share is the classic length hack.
SELECT run_id, policy, intent, response_words, proxy_reward, gold_reward
FROM v_samples
WHERE stage = 'eval'
ORDER BY run_id, policy, response_words;

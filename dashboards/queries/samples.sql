-- Evaluation samples: each policy's answer to the same prompts (same sampling seed).
SELECT run_id, prompt_id, intent, prompt, policy, response, proxy_reward, gold_reward, kl, response_words
FROM v_samples
WHERE stage = 'eval'
ORDER BY run_id, prompt, policy;

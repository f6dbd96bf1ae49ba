-- The policy methods over seeds (minirlhf compare): per policy and pair of methods, means with 95% paired-bootstrap
-- intervals over seeds and prompts (view v_compare), newest comparison first.
SELECT c.run_id, r.started_at, c.policy, c.gold, c.gold_low, c.gold_high, c.gold_gain, c.gold_gain_low,
       c.gold_gain_high, c.win_rate_gold, c.win_rate_gold_low, c.win_rate_gold_high, c.proxy, c.kl, c.episodes,
       c.seconds
FROM v_compare c JOIN runs r USING (run_id)
ORDER BY r.started_at DESC, c.policy

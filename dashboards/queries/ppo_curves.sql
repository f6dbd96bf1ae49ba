-- PPO per step: proxy (reward model) and gold reward, KL to the reference, per attempt with its resume point.
SELECT run_id, attempt, stage_status, reused, resumed_from_step, step, proxy_reward, gold_reward, kl, non_score_reward,
       entropy, approxkl, clipfrac, value_loss
FROM v_ppo_curves
ORDER BY run_id, attempt, step;

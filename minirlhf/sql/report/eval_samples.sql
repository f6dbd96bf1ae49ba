-- The evaluation samples of run $run_id from one eval attempt (the newest that recorded samples).
WITH scored AS (
    SELECT *, max(recorded_at) OVER (PARTITION BY stage_run_id) AS attempt_recorded_at
    FROM v_samples WHERE run_id = $run_id AND stage = 'eval')
SELECT policy, prompt_id, intent, prompt, response, proxy_reward, gold_reward, response_words
FROM scored
QUALIFY dense_rank() OVER (ORDER BY attempt_recorded_at DESC, stage_run_id) = 1
ORDER BY policy, prompt_id;

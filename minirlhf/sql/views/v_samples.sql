-- One row per sample, with its run, stage and attempt (reused ones included), kl and response_words.
SELECT o.run_id, o.stage, o.attempt, o.reused, x.stage_run_id, x.step, x.policy, x.prompt_id, x.intent, x.prompt, x.response,
       x.proxy_reward, x.gold_reward, TRY_CAST(json_extract_string(x.extra, '$.kl') AS DOUBLE) AS kl,
       CASE WHEN trim(coalesce(x.response, '')) = '' THEN 0
            ELSE len(regexp_split_to_array(trim(x.response), '\s+')) END AS response_words,
       x.extra, x.recorded_at
FROM v_stage_outputs o JOIN samples x USING (stage_run_id)

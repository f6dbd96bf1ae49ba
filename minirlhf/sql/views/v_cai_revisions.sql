-- One row per red-team prompt of Constitutional AI (minirlhf/cai.py): the policy's initial answer, the principle
-- drawn for it, the critic's critique and its revision, with gold where the task has it.
SELECT i.run_id, i.stage_run_id, i.prompt_id, i.prompt, json_extract_string(i.extra, '$.principle') AS principle,
       i.response AS initial, json_extract_string(i.extra, '$.critique') AS critique, r.response AS revision,
       i.gold_reward AS initial_gold, r.gold_reward AS revised_gold, i.recorded_at
FROM v_samples i
JOIN v_samples r ON r.run_id = i.run_id AND r.stage_run_id = i.stage_run_id AND r.prompt_id = i.prompt_id
WHERE i.stage = 'cai' AND i.policy = 'cai_initial' AND r.policy = 'cai_revision'

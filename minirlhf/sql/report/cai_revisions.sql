-- The first $n red-team answers of run $run_id with their principle, critique and revision (v_cai_revisions).
SELECT principle, prompt, initial, critique, revision, initial_gold, revised_gold
FROM v_cai_revisions
WHERE run_id = $run_id
ORDER BY TRY_CAST(replace(prompt_id, 'cai-', '') AS INTEGER)
LIMIT $n;

-- Constitutional AI: each red-team answer, the principle it was critiqued by, the critique and the revision.
SELECT run_id, prompt_id, principle, prompt, initial, critique, revision, initial_gold, revised_gold
FROM v_cai_revisions
ORDER BY run_id, TRY_CAST(replace(prompt_id, 'cai-', '') AS INTEGER);

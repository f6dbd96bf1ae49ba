-- Reward model: held-out pairwise accuracy per prompt intent.
SELECT run_id, intent, accuracy FROM v_rm_accuracy_by_intent ORDER BY run_id, intent;

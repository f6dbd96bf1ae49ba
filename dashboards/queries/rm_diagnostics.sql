-- Reward model: its held-out summary metrics (accuracy, margin, length and gold correlations, ...).
SELECT run_id, name, value
FROM v_metrics
WHERE stage = 'reward' AND name LIKE 'rm/%' AND name NOT LIKE 'rm/train_%' AND name NOT LIKE 'rm/accuracy/%'
ORDER BY run_id, name;

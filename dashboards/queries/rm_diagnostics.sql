-- Reward model: its held-out summary metrics (accuracy, margin, length and gold correlations, ...).
SELECT run_id, name, value
FROM v_metrics
WHERE stage = 'reward' AND name LIKE 'reward/%' AND name NOT LIKE 'reward/train_%' AND name NOT LIKE 'reward/accuracy/%'
ORDER BY run_id, name;

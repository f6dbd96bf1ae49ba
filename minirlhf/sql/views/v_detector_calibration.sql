-- One row per calibration and detector (each gold-free signal alone, and 'combined', the warning): its threshold
-- (for 'combined': how many signals must agree), chosen on the training seeds, and on the other seeds the recall on
-- runs with a gold onset, the false alarms on healthy runs and the median lead (onset step - fire step).
-- Logged at step 0 under calibration/<detector>/* (minirlhf/calibration.py).
SELECT o.run_id, m.stage_run_id, split_part(m.name, '/', 2) AS detector,
       max(m.value) FILTER (m.name LIKE '%/threshold') AS threshold,
       max(m.value) FILTER (m.name LIKE '%/recall') AS recall,
       max(m.value) FILTER (m.name LIKE '%/false_alarms') AS false_alarms,
       max(m.value) FILTER (m.name LIKE '%/n_hacked') AS n_hacked,
       max(m.value) FILTER (m.name LIKE '%/n_healthy') AS n_healthy,
       max(m.value) FILTER (m.name LIKE '%/median_lead') AS median_lead
FROM v_stage_outputs o JOIN metrics m USING (stage_run_id)
WHERE o.stage = 'calibration' AND m.name LIKE 'calibration/%/%'
GROUP BY ALL

-- The gold-free reward-hacking warning, calibrated: per calibration run and detector, the threshold chosen on the
-- training seeds and recall / false alarms / median lead on the held-out seeds (view v_detector_calibration).
SELECT c.run_id, r.started_at, c.detector, c.threshold, c.recall, c.n_hacked, c.false_alarms, c.n_healthy,
       c.median_lead
FROM v_detector_calibration c JOIN runs r USING (run_id)
ORDER BY r.started_at DESC, c.detector = 'combined' DESC, c.detector

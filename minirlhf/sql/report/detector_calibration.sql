-- The detectors of calibration stage run $stage_run_id, the combined warning last.
SELECT detector, threshold, recall, n_hacked, false_alarms, n_healthy, median_lead
FROM v_detector_calibration WHERE stage_run_id = $stage_run_id
ORDER BY detector = 'combined', detector;

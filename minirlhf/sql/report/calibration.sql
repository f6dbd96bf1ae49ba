-- The newest reward-hacking calibration stage that recorded detectors: its run, stage run and output folder.
SELECT s.run_id, s.stage_run_id, s.status, s.started_at, s.output_dir FROM stage_runs s
WHERE s.stage = 'calibration'
  AND EXISTS (SELECT 1 FROM v_detector_calibration c WHERE c.stage_run_id = s.stage_run_id)
ORDER BY s.started_at DESC LIMIT 1;

-- The newest sweep stage that recorded points, of run or stage run $sweep_run_id ('' for any run).
SELECT s.run_id, s.stage_run_id, s.status, s.started_at FROM stage_runs s
WHERE s.stage = 'sweep' AND $sweep_run_id IN ('', s.run_id, s.stage_run_id)
  AND EXISTS (SELECT 1 FROM v_sweep_points p WHERE p.stage_run_id = s.stage_run_id)
ORDER BY s.started_at DESC LIMIT 1;

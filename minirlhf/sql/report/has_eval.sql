-- Did run $run_id start an eval stage (so the failure detectors ran)? One row if so.
SELECT 1 AS found FROM stage_runs WHERE run_id = $run_id AND stage = 'eval' LIMIT 1;

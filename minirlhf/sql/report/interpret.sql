-- The reward-model probes of run $run_id (stage 'interpret'): its newest completed stage run, folder and metrics.
SELECT s.stage_run_id, s.output_dir, m.name, m.value
FROM stage_runs s JOIN metrics m USING (stage_run_id)
WHERE s.run_id = $run_id AND s.stage = 'interpret' AND s.status = 'completed'
  AND s.stage_run_id = (SELECT stage_run_id FROM stage_runs WHERE run_id = $run_id AND stage = 'interpret'
                        AND status = 'completed' ORDER BY started_at DESC LIMIT 1)
ORDER BY m.name;

-- The Constitutional AI stages of run $run_id (cai, rlaif): each stage's newest completed stage run and its metrics.
SELECT s.stage, m.name, m.value
FROM stage_runs s JOIN metrics m USING (stage_run_id)
WHERE s.run_id = $run_id AND s.stage IN ('cai', 'rlaif') AND s.status = 'completed'
  AND s.stage_run_id = (SELECT x.stage_run_id FROM stage_runs x WHERE x.run_id = $run_id AND x.stage = s.stage
                        AND x.status = 'completed' ORDER BY x.started_at DESC LIMIT 1)
ORDER BY s.stage, m.name;

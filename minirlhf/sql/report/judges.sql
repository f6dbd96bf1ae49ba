-- The judge stage of run $run_id: its newest completed stage run's metrics (judge/..., judge_rm/...).
SELECT m.name, m.value
FROM stage_runs s JOIN metrics m USING (stage_run_id)
WHERE s.stage_run_id = (SELECT x.stage_run_id FROM stage_runs x WHERE x.run_id = $run_id AND x.stage = 'judge'
                        AND x.status = 'completed' ORDER BY x.started_at DESC LIMIT 1)
ORDER BY m.name;

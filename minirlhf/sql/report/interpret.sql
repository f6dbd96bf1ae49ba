-- Run $run_id's newest completed interpret stage (else the store's newest: `--stages interpret` is a run of its own).
WITH chosen AS (
    SELECT stage_run_id FROM stage_runs
    WHERE stage = 'interpret' AND status = 'completed'
    ORDER BY (run_id = $run_id) DESC, started_at DESC
    LIMIT 1
)
SELECT s.stage_run_id, s.run_id, s.output_dir, m.name, m.value
FROM stage_runs s JOIN metrics m USING (stage_run_id)
WHERE s.stage_run_id = (SELECT stage_run_id FROM chosen)
ORDER BY m.name;

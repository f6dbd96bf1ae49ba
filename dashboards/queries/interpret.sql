-- What the reward model computes (minirlhf/interpret.py): the metrics of each run's newest completed interpret
-- stage (probe score per feature and layer, decodable_at, score_r2, baseline; on HH length_corr) and its folder.
WITH newest AS (
    SELECT run_id, stage_run_id, output_dir, started_at
    FROM v_stage_runs
    WHERE stage = 'interpret' AND status = 'completed'
    QUALIFY row_number() OVER (PARTITION BY run_id ORDER BY started_at DESC) = 1
)
SELECT n.run_id, n.output_dir, n.started_at, m.name, m.value
FROM newest n JOIN v_metrics m USING (stage_run_id)
ORDER BY n.started_at DESC, m.name;

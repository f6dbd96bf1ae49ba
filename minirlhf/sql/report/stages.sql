-- Every stage attempt of run $run_id in start order, with the run that computed an output this run reused.
SELECT s.stage, s.attempt, s.status, s.cache_hit, s.duration_s, s.cause,
       (SELECT any_value(o.source_run_id) FROM v_stage_outputs o
        WHERE o.run_id = s.run_id AND o.stage = s.stage AND o.reused) AS source_run_id
FROM v_stage_runs s WHERE s.run_id = $run_id ORDER BY s.started_at;

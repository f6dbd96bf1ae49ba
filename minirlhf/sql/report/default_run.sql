-- The default run of a report: the newest completed eval (not a sweep or calibration), else any eval, else newest.
SELECT r.run_id,
       bool_or(s.stage = 'eval' AND s.status = 'completed') AS eval_done,
       bool_or(s.stage = 'eval') AS has_eval,
       bool_or(s.stage IN ('sweep', 'calibration')) AS is_sweep
FROM runs r LEFT JOIN stage_runs s USING (run_id)
GROUP BY r.run_id, r.started_at
ORDER BY coalesce(eval_done, false) AND NOT coalesce(is_sweep, false) DESC, coalesce(eval_done, false) DESC,
         coalesce(has_eval, false) DESC, r.started_at DESC
LIMIT 1;

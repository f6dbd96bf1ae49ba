-- The reward stage's metrics of run $run_id, each at its newest value (the report shows those it knows, RM_METRICS).
SELECT name, arg_max(value, recorded_at) AS value FROM v_metrics
WHERE run_id = $run_id AND stage = 'reward'
GROUP BY name ORDER BY name;

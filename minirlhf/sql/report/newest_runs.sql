-- The five newest runs: named when the run asked for is not in the store.
SELECT run_id FROM runs ORDER BY started_at DESC LIMIT 5;

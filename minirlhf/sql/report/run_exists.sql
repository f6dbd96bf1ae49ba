-- Is $run_id a run in this store? One row if so, none if not.
SELECT 1 AS found FROM runs WHERE run_id = $run_id;

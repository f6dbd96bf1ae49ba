-- The run $run_id: status, git sha, timings, Prefect flow run, and the name of its config.
SELECT *, json_extract_string(config, '$.name') AS config_name FROM v_runs WHERE run_id = $run_id;

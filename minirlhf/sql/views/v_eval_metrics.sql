-- One row per evaluation metric of a policy, long form (policy, metric, value).
SELECT s.run_id, m.stage_run_id, split_part(m.name, '/', 2) AS policy,
       substr(m.name, length('eval/' || split_part(m.name, '/', 2) || '/') + 1) AS metric, m.value
FROM metrics m JOIN stage_runs s USING (stage_run_id)
WHERE s.stage = 'eval' AND m.name LIKE 'eval/%/%'

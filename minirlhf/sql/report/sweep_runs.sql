-- The runs that have a sweep stage: named when the sweep asked for is not in the store.
SELECT DISTINCT run_id FROM stage_runs WHERE stage = 'sweep';

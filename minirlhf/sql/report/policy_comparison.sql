-- Every policy's evaluation in run $run_id, from its newest completed eval attempt (else its newest attempt).
SELECT p.* FROM v_policy_comparison p JOIN stage_runs s USING (stage_run_id)
WHERE p.run_id = $run_id
QUALIFY dense_rank() OVER (ORDER BY s.status = 'completed' DESC, s.started_at DESC) = 1;

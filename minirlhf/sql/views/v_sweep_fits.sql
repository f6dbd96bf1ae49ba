-- One row per sweep and reward (gold, proxy): alpha, beta, r2, d_star of R(d) = d(alpha - beta log d).
-- The fit of Gao et al. 2022's R(d) = d(alpha - beta log d), logged at step 0 under sweep/fit/<reward>/*.
SELECT o.run_id, m.stage_run_id, split_part(m.name, '/', 3) AS reward,
       max(m.value) FILTER (m.name LIKE '%/alpha') AS alpha,
       max(m.value) FILTER (m.name LIKE '%/beta') AS beta,
       max(m.value) FILTER (m.name LIKE '%/r2') AS r2,
       max(m.value) FILTER (m.name LIKE '%/d_star') AS d_star
FROM v_stage_outputs o JOIN metrics m USING (stage_run_id)
WHERE o.stage = 'sweep' AND m.name LIKE 'sweep/fit/%/%'
GROUP BY ALL

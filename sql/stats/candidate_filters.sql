-- Candidates removed by each filter, with their share of that role's candidates.
SELECT role, coalesce(filter_reason, '(kept)') AS filter, count(*) AS n,
       round(100.0 * count(*) / sum(count(*)) OVER (PARTITION BY role), 1) AS pct_of_role
FROM candidates GROUP BY role, filter_reason ORDER BY role, n DESC

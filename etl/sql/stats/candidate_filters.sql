-- Candidates removed by each filter, with their share of that role's candidates: structural filters
-- (layer candidates) and score-margin filters on the teacher-scored ones (layer scored_candidates).
WITH all_filters AS (
    SELECT role, filter_reason FROM candidates
    UNION ALL
    SELECT role, filter_reason FROM scored_candidates WHERE filter_reason IS NOT NULL
)
SELECT role, coalesce(filter_reason, '(passed structural filters)') AS filter, count(*) AS n,
       round(100.0 * count(*) / sum(count(*)) OVER (PARTITION BY role), 1) AS pct_of_role
FROM all_filters GROUP BY role, filter_reason ORDER BY role, n DESC

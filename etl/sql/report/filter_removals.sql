-- Candidates removed by each filter: structural filters (layer candidates: is_positive,
-- rank_window, same_document, same_title, near_duplicate, same_cluster, in_neighbours,
-- duplicate_draw, positive_rank_too_low) and the teacher-score filters (layer scored_candidates:
-- scored_above_positive, relative_margin, absolute_margin), with their share of the role's
-- candidates. Columns: stage, role, filter, n, pct_of_role.
WITH per_role AS (SELECT role, count(*) AS total FROM candidates GROUP BY role),
removed AS (
    SELECT 'structural' AS stage, role, filter_reason FROM candidates WHERE filter_reason IS NOT NULL
    UNION ALL
    SELECT 'teacher score' AS stage, role, filter_reason FROM scored_candidates WHERE filter_reason IS NOT NULL
)
SELECT r.stage, r.role, r.filter_reason AS filter, count(*) AS n,
       round(100.0 * count(*) / any_value(t.total), 2) AS pct_of_role
FROM removed r JOIN per_role t USING (role)
GROUP BY r.stage, r.role, r.filter_reason
ORDER BY r.stage, r.role, n DESC, filter

-- Teacher-score gap between each record's positive and its negatives, by negative role:
-- gap = positive's teacher score - negative's teacher score (teacher_scores), and the same in the
-- e5 cosine (bi_scores). A gap near 0 is a negative the teacher finds as relevant as the
-- positive: a likely false negative. Columns: role, n, min/p10/median/avg gap, min/avg cosine gap.
WITH flat AS (
    SELECT query_id, unnest(roles) AS role, unnest(teacher_scores) AS ts, unnest(bi_scores) AS cos
    FROM examples
),
pos AS (SELECT query_id, ts AS pos_ts, cos AS pos_cos FROM flat WHERE role = 'positive'),
gaps AS (
    SELECT f.role, p.pos_ts - f.ts AS gap, p.pos_cos - f.cos AS cos_gap
    FROM flat f JOIN pos p USING (query_id)
    WHERE f.role <> 'positive'
)
SELECT role, count(*) AS n,
       round(min(gap), 4) AS min_gap,
       round(quantile_cont(gap, 0.1), 4) AS p10_gap,
       round(median(gap), 4) AS median_gap,
       round(avg(gap), 4) AS avg_gap,
       round(min(cos_gap), 4) AS min_cosine_gap,
       round(avg(cos_gap), 4) AS avg_cosine_gap
FROM gaps
GROUP BY role
ORDER BY CASE role WHEN 'hard' THEN 1 WHEN 'related' THEN 2 ELSE 3 END

-- Exported scores by role (positive / hard / related / easy): the per-record min-max normalized
-- teacher score x scoring.scale, the teacher's raw score, and the e5 cosine (bi_scores).
-- Columns: role, n, min/p25/median/p75/max/avg score, avg_teacher_score, avg_cosine.
WITH flat AS (
    SELECT unnest(roles) AS role, unnest(scores) AS score, unnest(teacher_scores) AS teacher_score,
           unnest(bi_scores) AS cosine
    FROM examples
)
SELECT role, count(*) AS n,
       round(min(score), 3) AS min_score,
       round(quantile_cont(score, 0.25), 3) AS p25_score,
       round(median(score), 3) AS median_score,
       round(quantile_cont(score, 0.75), 3) AS p75_score,
       round(max(score), 3) AS max_score,
       round(avg(score), 3) AS avg_score,
       round(avg(teacher_score), 4) AS avg_teacher_score,
       round(avg(cosine), 4) AS avg_cosine
FROM flat
GROUP BY role
ORDER BY CASE role WHEN 'positive' THEN 0 WHEN 'hard' THEN 1 WHEN 'related' THEN 2 ELSE 3 END

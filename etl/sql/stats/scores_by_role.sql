-- Score, e5 cosine (bi_scores) and teacher score distribution by role (positive / hard / related / easy).
WITH flat AS (
    SELECT unnest(roles) AS role, unnest(scores) AS score, unnest(bi_scores) AS sim, unnest(teacher_scores) AS teacher FROM examples
)
SELECT role, count(*) AS n,
       round(min(score), 3) AS min_score, round(avg(score), 3) AS avg_score, round(max(score), 3) AS max_score,
       round(avg(sim), 4) AS avg_bi_encoder_sim, round(avg(teacher), 4) AS avg_teacher_score
FROM flat GROUP BY role
ORDER BY CASE role WHEN 'positive' THEN 0 WHEN 'hard' THEN 1 WHEN 'related' THEN 2 ELSE 3 END

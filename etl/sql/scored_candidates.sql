-- Layer scored_candidates: the candidates the teacher scored (layer teacher_scores), with the
-- positive-aware filters of sentence-transformers' mine_hard_negatives applied to teacher scores:
--   scored_above_positive  score >= the positive's score
--   relative_margin        score > positive - |positive| * filters.relative_margin   (0 = off)
--   absolute_margin        score + filters.absolute_margin > positive               (0 = off)
-- filter_reason NULL = usable. Rows removed earlier (layer candidates) are not repeated here.
-- @unique: query_id, role, rank
-- @not_null: query_id, passage_id, role, rank, teacher_score, bi_score
-- @check: isfinite(teacher_score)
WITH pos AS (
    SELECT query_id, teacher_score AS pos_score FROM teacher_scores WHERE role = 'positive'
)
SELECT t.query_id, t.passage_id, t.role, t.rank, t.bi_score, t.ce_score, t.teacher_score,
       CASE
           WHEN t.role = 'positive' THEN NULL
           WHEN t.teacher_score >= p.pos_score THEN 'scored_above_positive'
           WHEN getvariable('relative_margin') > 0
                AND t.teacher_score > p.pos_score - abs(p.pos_score) * getvariable('relative_margin')
               THEN 'relative_margin'
           WHEN getvariable('absolute_margin') > 0
                AND t.teacher_score + getvariable('absolute_margin') > p.pos_score
               THEN 'absolute_margin'
       END AS filter_reason
FROM teacher_scores t
JOIN pos p USING (query_id)
-- No ORDER BY (tens of millions of rows at full scale; examples.sql picks per query with windows).

-- Layer scored_candidates: the candidates the teacher scored (layer teacher_scores), with the
-- positive-aware filters of sentence-transformers' mine_hard_negatives applied to teacher scores,
-- with the margin measured against this run's own score scale:
--   scored_above_positive    score >= the positive's score
--   relative_margin          score > pos - filters.relative_margin * |pos - baseline|        (0 = off)
--   absolute_margin          score + filters.absolute_margin > pos                          (0 = off)
--   near_duplicate_negative  cosine >= filters.near_duplicate_cosine to a negative candidate of the
--                            same query that comes before it in picking order (hard: rank window
--                            first, then best score; related: best score; easy: draw order), so no
--                            two negatives of a record tell the same thing in nearly the same words
-- baseline (filters.margin_baseline):
--   "random"  the median teacher score of the run's random (easy) draws: the score of an unrelated
--             pair for this teacher. The margin is then a fraction of the positive's height above
--             unrelated pairs, which means the same for e5 (a random pair scores ~0.78) as for a
--             cross-encoder (~0). No easy draws scored (negatives.easy = 0): baseline 0.
--   "zero"    baseline 0: score > pos - margin * |pos|, the NV-Retriever rule (TopK-PercPos 0.95 for
--             margin 0.05), meant for teachers whose unrelated pairs score near 0.
-- filter_reason NULL = usable. Rows removed earlier (layer candidates) are not repeated here.
-- The teacher stage runs this same query on the scores it has so far to find the queries the
-- filters leave short of hard negatives, and scores deeper candidates for them (etl/teacher.py).
-- @unique: query_id, role, rank
-- @not_null: query_id, passage_id, role, rank, teacher_score, bi_score
-- @check: isfinite(teacher_score)
WITH pos AS (
    SELECT query_id, teacher_score AS pos_score FROM teacher_scores WHERE role = 'positive'
),
base AS (
    SELECT CASE WHEN getvariable('margin_baseline') = 'random' THEN coalesce(median(teacher_score), 0) ELSE 0 END AS b
    FROM teacher_scores WHERE role = 'easy'
),
prow AS (  -- row of each passage in embeddings/document_embeddings.npy (exported in passage_id order)
    SELECT passage_id, row_number() OVER (ORDER BY passage_id) - 1 AS p_row FROM passage_embeddings
),
margins AS (
    SELECT t.query_id, t.passage_id, t.role, t.rank, t.bi_score, t.ce_score, t.teacher_score,
           CASE
               WHEN t.role = 'positive' THEN NULL
               WHEN t.teacher_score >= p.pos_score THEN 'scored_above_positive'
               WHEN getvariable('relative_margin') > 0
                    AND t.teacher_score > p.pos_score - getvariable('relative_margin') * abs(p.pos_score - base.b)
                   THEN 'relative_margin'
               WHEN getvariable('absolute_margin') > 0
                    AND t.teacher_score + getvariable('absolute_margin') > p.pos_score
                   THEN 'absolute_margin'
           END AS margin_reason
    FROM teacher_scores t
    JOIN pos p USING (query_id)
    CROSS JOIN base
),
ordered AS (  -- each query's negatives that pass the margins, in picking order, as one list
    SELECT m.query_id,
           list({'role': m.role, 'rank': m.rank, 'p_row': r.p_row} ORDER BY
                CASE m.role WHEN 'hard' THEN 0 WHEN 'related' THEN 1 ELSE 2 END,
                CASE WHEN m.role = 'hard' THEN m.rank > getvariable('top_k') END,
                CASE WHEN m.role <> 'easy' THEN -m.teacher_score END,
                CASE WHEN m.role <> 'easy' THEN m.passage_id END, m.rank) AS items
    FROM margins m
    JOIN prow r USING (passage_id)
    WHERE m.role <> 'positive' AND m.margin_reason IS NULL
    GROUP BY m.query_id
),
dups AS (
    SELECT query_id, k.role, k.rank
    FROM (SELECT query_id, unnest(items) AS k,
                 unnest(near_duplicate_of_earlier(list_transform(items, lambda x: x.p_row),
                                                  getvariable('near_duplicate_cosine'))) AS dup
          FROM ordered
          WHERE getvariable('near_duplicate_cosine') < 1 AND len(items) > 1)
    WHERE dup
)
SELECT m.query_id, m.passage_id, m.role, m.rank, m.bi_score, m.ce_score, m.teacher_score,
       coalesce(m.margin_reason, CASE WHEN d.query_id IS NOT NULL THEN 'near_duplicate_negative' END) AS filter_reason
FROM margins m
LEFT JOIN dups d USING (query_id, role, rank)
-- No ORDER BY (tens of millions of rows at full scale; examples.sql picks per query with windows).

-- Decontamination per evaluation set (layer decontamination, etl/decontaminate.py):
-- eval_questions  distinct evaluation questions (normalized)
-- queries_excluded  queries equal (normalized) to one of them: dropped as contaminated_query
-- passages_excluded corpus passages equal to (exact) or overlapping (ngram) an evaluation passage:
--                   never a positive or a negative
-- positives_excluded queries whose positive was such a passage (contaminated_positive)
-- negatives_excluded candidate negatives removed as contaminated
-- Columns: name, eval_questions, queries_excluded, passages_excluded, passages_exact, passages_ngram,
-- positives_excluded, negatives_excluded.
WITH sets AS (SELECT DISTINCT name FROM decontamination),
qk AS (
    SELECT query_id,
           lower(trim(regexp_replace(nfc_normalize(query), '[\s\pZ\x{0B}\x{1C}-\x{1F}\x{85}]+', ' ', 'g'))) AS key
    FROM queries
),
qs AS (
    SELECT d.name, count(*) FILTER (WHERE d.kind = 'question') AS eval_questions,
           count(DISTINCT qk.query_id) AS queries_excluded
    FROM decontamination d LEFT JOIN qk ON d.kind = 'question' AND qk.key = d.key
    GROUP BY 1
),
ps AS (
    SELECT name, count(DISTINCT passage_id) AS passages_excluded,
           count(DISTINCT passage_id) FILTER (WHERE match = 'exact') AS passages_exact,
           count(DISTINCT passage_id) FILTER (WHERE match = 'ngram') AS passages_ngram
    FROM decontamination WHERE kind = 'passage' GROUP BY 1
),
cs AS (
    SELECT d.name,
           count(DISTINCT c.query_id) FILTER (WHERE c.role = 'positive') AS positives_excluded,
           count(*) FILTER (WHERE c.filter_reason = 'contaminated') AS negatives_excluded
    FROM candidates c JOIN decontamination d ON d.kind = 'passage' AND d.passage_id = c.passage_id
    GROUP BY 1
)
SELECT s.name, coalesce(qs.eval_questions, 0) AS eval_questions, coalesce(qs.queries_excluded, 0) AS queries_excluded,
       coalesce(ps.passages_excluded, 0) AS passages_excluded, coalesce(ps.passages_exact, 0) AS passages_exact,
       coalesce(ps.passages_ngram, 0) AS passages_ngram, coalesce(cs.positives_excluded, 0) AS positives_excluded,
       coalesce(cs.negatives_excluded, 0) AS negatives_excluded
FROM sets s LEFT JOIN qs USING (name) LEFT JOIN ps USING (name) LEFT JOIN cs USING (name)
ORDER BY s.name

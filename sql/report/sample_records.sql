-- A handful of training records shown in full (docs, scores, roles, passage ids, teacher scores):
-- up to getvariable('report_samples') records (default 4), spread over the query methods, chosen
-- by a hash of query_id so the same records come back on every run.
WITH ranked AS (
    SELECT *, row_number() OVER (PARTITION BY method ORDER BY md5(query_id)) AS pick
    FROM examples
)
SELECT query_id, query, method, source, doc_id, split, docs, scores, roles, passage_ids,
       teacher_scores, teacher_sims
FROM ranked
ORDER BY pick, method
LIMIT coalesce(getvariable('report_samples'), 4)

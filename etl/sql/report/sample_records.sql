-- A handful of training records shown in full (docs, scores, roles, passage ids, teacher scores):
-- up to getvariable('report_samples') records (default 4), spread over the query methods, chosen
-- by a hash of query_id so the same records come back on every run. Texts are joined for the
-- picked records only (docs[1] = the query's own positive text where it has one, as exported).
WITH ranked AS (
    SELECT *, row_number() OVER (PARTITION BY method ORDER BY md5(query_id)) AS pick
    FROM examples
),
picked AS (
    SELECT * FROM ranked ORDER BY pick, method LIMIT coalesce(getvariable('report_samples'), 4)
),
texts AS (
    SELECT s.query_id,
           list_transform(list_sort(list({'slot': s.slot,
                                          'text': coalesce(CASE WHEN s.slot = 1 THEN q.positive_text END, p.text)})),
                          lambda x: x.text) AS docs
    FROM (SELECT query_id, unnest(passage_ids) AS passage_id, generate_subscripts(passage_ids, 1) AS slot
          FROM picked) s
    JOIN passages p USING (passage_id)
    JOIN queries q USING (query_id)
    GROUP BY s.query_id
)
SELECT query_id, query, method, source, doc_id, split, t.docs, scores, roles, passage_ids,
       teacher_scores, bi_scores
FROM picked
JOIN texts t USING (query_id)
ORDER BY pick, method

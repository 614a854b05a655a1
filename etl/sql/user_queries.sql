-- Layer user_queries: query-file lines resolved against the corpus.
-- doc_id may be our "<source>:<id>" or a source's original id when that is unambiguous.
-- The positive is passage_id when given, else the document's passage the teacher scores highest.
-- Unresolvable lines keep a reject_reason (unknown_doc_id, ambiguous_doc_id, unknown_passage_id,
-- passage_not_in_doc) and are reported; queries.sql uses the resolved ones only.
-- @not_null: name, file, line_no
-- @check: reject_reason IS NOT NULL OR (doc_id IS NOT NULL AND positive_passage_id IS NOT NULL)
WITH r AS (SELECT * FROM query_file_rows),
by_doc AS (
    SELECT r.name, r.file, r.line_no, list_distinct(list(d.doc_id) FILTER (WHERE d.doc_id IS NOT NULL)) AS docs
    FROM r
    LEFT JOIN documents d ON r.doc_id IS NOT NULL AND (d.doc_id = r.doc_id OR d.orig_id = r.doc_id)
    GROUP BY ALL
),
resolved AS (
    SELECT r.name, r.file, r.line_no, r.query, r.passage_id,
           CASE WHEN r.passage_id IS NOT NULL AND r.doc_id IS NULL THEN p.doc_id
                WHEN len(b.docs) = 1 THEN b.docs[1]
                WHEN list_contains(b.docs, r.doc_id) THEN r.doc_id END AS doc_id,
           r.reject_reason, len(b.docs) AS n_docs, p.doc_id AS passage_doc
    FROM r
    JOIN by_doc b USING (name, file, line_no)
    LEFT JOIN passages p ON p.passage_id = r.passage_id
)
SELECT x.name, x.file, x.line_no, x.query, x.doc_id, d.source,
       -- without a passage_id the positive is resolved in candidates.sql: the doc's passage the teacher
       -- scores highest; doc#0 is the placeholder until then
       CASE WHEN x.reject_reason IS NULL THEN coalesce(x.passage_id, x.doc_id || '#0') END AS positive_passage_id,
       x.passage_id IS NOT NULL AS positive_fixed,
       CASE
           WHEN x.reject_reason IS NOT NULL THEN x.reject_reason
           WHEN x.passage_id IS NOT NULL AND x.passage_doc IS NULL THEN 'unknown_passage_id'
           WHEN x.doc_id IS NULL AND x.n_docs > 1 THEN 'ambiguous_doc_id'
           WHEN x.doc_id IS NULL THEN 'unknown_doc_id'
           WHEN x.passage_id IS NOT NULL AND x.passage_doc <> x.doc_id THEN 'passage_not_in_doc'
       END AS reject_reason
FROM resolved x
LEFT JOIN documents d ON d.doc_id = x.doc_id
ORDER BY x.name, x.file, x.line_no

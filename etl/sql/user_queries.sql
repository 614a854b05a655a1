-- Layer user_queries: query-file records (query_file_rows) resolved against the corpus, one row per
-- (line, target); a target is one document or passage the line names.
--   A line naming passages has one target per passage (passage_id = the named passage, doc_id = its
--   document); the line's doc_ids, if any, must then include that document (else passage_not_in_doc).
--   A line naming documents only has one target per document (passage_id NULL: the positive is the
--   document's passage the teacher scores highest). A named document is our "<source>:<id>" or a
--   source's original id when that is unambiguous.
-- reject_reason NULL = usable. Per target: unknown_doc_id, ambiguous_doc_id, unknown_passage_id,
-- passage_not_in_doc. A line rejected when read (malformed_json, missing_query, missing_doc_id,
-- wrong_type:<key>, ...) is one row with target_no 0. duplicate_line: every row of a line identical to
-- an earlier one (by name, file, line_no): the same normalized query naming the same ids (in any order).
-- named_id: the id as the file wrote it. drop_low_rank: the query file's drop_low_rank_positives.
-- One question on several lines (several positives) stays several rows here; queries.sql groups by query.
-- @unique: name, file, line_no, target_no
-- @not_null: name, file, line_no, target_no, drop_low_rank
-- @check: reject_reason IS NOT NULL OR (doc_id IS NOT NULL AND source IS NOT NULL AND query IS NOT NULL)
WITH ok AS (
    SELECT * FROM query_file_rows WHERE reject_reason IS NULL
),
dup AS (
    SELECT name, file, line_no,
           row_number() OVER (PARTITION BY query, list_sort(doc_ids), list_sort(passage_ids)
                              ORDER BY name, file, line_no) > 1 AS is_dup
    FROM ok
),
doc_t AS (
    SELECT name, file, line_no, query, drop_low_rank, unnest(doc_ids) AS named_id,
           generate_subscripts(doc_ids, 1) AS target_no
    FROM ok
    WHERE len(passage_ids) = 0
),
doc_hits AS (  -- two equality joins (a hash join each), not one OR join (a nested loop over all documents)
    SELECT t.name, t.file, t.line_no, t.target_no, d.doc_id FROM doc_t t JOIN documents d ON d.doc_id = t.named_id
    UNION
    SELECT t.name, t.file, t.line_no, t.target_no, d.doc_id FROM doc_t t JOIN documents d ON d.orig_id = t.named_id
),
doc_rows AS (
    SELECT t.name, t.file, t.line_no, t.target_no, t.query, t.named_id, t.drop_low_rank,
           NULL::VARCHAR AS passage_id,
           CASE WHEN len(h.docs) = 1 THEN h.docs[1] WHEN list_contains(h.docs, t.named_id) THEN t.named_id END AS doc_id,
           CASE WHEN len(h.docs) = 1 OR list_contains(h.docs, t.named_id) THEN NULL
                WHEN len(h.docs) > 1 THEN 'ambiguous_doc_id'
                ELSE 'unknown_doc_id' END AS reason
    FROM doc_t t
    LEFT JOIN (SELECT name, file, line_no, target_no, list(doc_id ORDER BY doc_id) AS docs FROM doc_hits GROUP BY ALL) h
           ON h.name = t.name AND h.file = t.file AND h.line_no = t.line_no AND h.target_no = t.target_no
),
passage_t AS (
    SELECT name, file, line_no, query, drop_low_rank, doc_ids, unnest(passage_ids) AS named_id,
           generate_subscripts(passage_ids, 1) AS target_no
    FROM ok
    WHERE len(passage_ids) > 0
),
passage_rows AS (
    SELECT t.name, t.file, t.line_no, t.target_no, t.query, t.named_id, t.drop_low_rank,
           t.named_id AS passage_id, p.doc_id,
           CASE WHEN p.passage_id IS NULL THEN 'unknown_passage_id'
                WHEN len(t.doc_ids) > 0 AND NOT (list_contains(t.doc_ids, d.doc_id)
                                                 OR coalesce(list_contains(t.doc_ids, d.orig_id), false))
                    THEN 'passage_not_in_doc' END AS reason
    FROM passage_t t
    LEFT JOIN chunks p ON p.passage_id = t.named_id  -- every chunk: a deduplicated one resolves to its kept copy in queries.sql
    LEFT JOIN documents d ON d.doc_id = p.doc_id
),
targets AS (
    SELECT * FROM doc_rows
    UNION ALL BY NAME
    SELECT * FROM passage_rows
)
SELECT t.name, t.file, t.line_no, t.target_no::INTEGER AS target_no, t.query, t.doc_id, d.source, t.passage_id,
       t.named_id, t.drop_low_rank, CASE WHEN x.is_dup THEN 'duplicate_line' ELSE t.reason END AS reject_reason
FROM targets t
JOIN dup x ON x.name = t.name AND x.file = t.file AND x.line_no = t.line_no
LEFT JOIN documents d ON d.doc_id = t.doc_id
UNION ALL BY NAME
SELECT name, file, line_no, 0::INTEGER AS target_no, query, NULL::VARCHAR AS doc_id, NULL::VARCHAR AS source,
       NULL::VARCHAR AS passage_id, NULL::VARCHAR AS named_id, drop_low_rank, reject_reason
FROM query_file_rows
WHERE reject_reason IS NOT NULL
ORDER BY name, file, line_no, target_no

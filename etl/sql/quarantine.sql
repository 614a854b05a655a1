-- Layer quarantine: every record read that did not become a document, with the reason.
-- stage = 'ingest' (unreadable / wrongly typed record) or 'clean' (filtered by a rule).
-- Nothing is lost silently: raw rows = documents + quarantine (checked by the runner).
-- @not_null: stage, source, reason
SELECT 'ingest' AS stage, source, file, line_no, NULL::VARCHAR AS doc_id, NULL::VARCHAR AS title,
       reject_reason AS reason, raw_excerpt AS excerpt
FROM raw_documents
WHERE reject_reason IS NOT NULL
UNION ALL BY NAME
SELECT 'clean' AS stage, source, file, line_no, doc_id, title, drop_reason AS reason, left(text, 200) AS excerpt
FROM clean_documents
WHERE drop_reason IS NOT NULL
ORDER BY stage, source, file, line_no

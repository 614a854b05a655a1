-- Layer documents: the clean documents that passed every filter (see clean_documents.sql).
-- @unique: doc_id
-- @not_null: doc_id, source, title, text, url
-- @check: n_chars > 0
SELECT doc_id, source, orig_id, url, title, language, text, n_chars
FROM clean_documents
WHERE drop_reason IS NULL
ORDER BY doc_id

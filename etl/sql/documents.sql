-- Layer documents: the clean documents that passed every filter (see clean_documents.sql).
-- No ORDER BY: clean_documents is written ordered by doc_id and a filtered scan keeps that order
-- (preserve_insertion_order = true); re-sorting the full text payload cost 86 s at 1M docs.
-- @unique: doc_id
-- title_derived: the record had no title; title is derived (see clean_documents.sql). Title queries skip these.
-- @not_null: doc_id, source, title, text, url, title_derived
-- @check: n_chars > 0
SELECT doc_id, source, orig_id, url, title, title_derived, language, text, n_chars
FROM clean_documents
WHERE drop_reason IS NULL

-- Layer passages: the chunks (layer chunks) whose normalized text is distinct across the whole
-- corpus: every chunk except those listed in passage_duplicates (see that file for the rule). So no
-- two passages share a normalized text, and no training record can hold the same text twice.
-- Every later stage reads this layer; a document may lose chunks here (its text lives on in the
-- kept copy, usually in another document).
-- @unique: passage_id
-- @not_null: passage_id, doc_id, source, title, chunk_no, text, n_chars
-- @check: n_chars BETWEEN 1 AND getvariable('chunk_max_chars')
SELECT c.*
FROM chunks c
ANTI JOIN passage_duplicates d USING (passage_id)
ORDER BY c.passage_id

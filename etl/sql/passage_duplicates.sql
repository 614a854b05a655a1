-- Layer passage_duplicates: chunks whose normalized text equals that of a chunk with a smaller
-- passage_id anywhere in the corpus (overlapping paragraphs of different articles, boilerplate,
-- mirrored pages). The first chunk by passage_id is kept (kept_passage_id); the others are left out
-- of layer passages, counted in metadata.json ("passage_duplicates"), and a query naming one of them
-- as its positive resolves to the kept one (queries.sql).
-- Normalized text: lower-cased, every whitespace run removed (RE2 '\s' = [\t\n\f\r ]; the cleaning
-- already turned other spaces into ' '). `python -m etl validate` applies the same rule to the docs
-- of each record (etl.validate.normalized_text_key).
-- Grouped by a 64-bit hash of the normalized text first (narrow rows); only chunks whose hash occurs
-- more than once are compared by the normalized text itself, so a collision never drops a passage.
-- @unique: passage_id
-- @not_null: passage_id, doc_id, kept_passage_id
-- @check: kept_passage_id < passage_id
WITH k AS (
    SELECT passage_id, hash(lower(regexp_replace(text, '\s+', '', 'g'))) AS h FROM chunks
),
multi AS (SELECT h FROM k GROUP BY h HAVING count(*) > 1),
cand AS (
    SELECT c.passage_id, c.doc_id, k.h, lower(regexp_replace(c.text, '\s+', '', 'g')) AS norm
    FROM k JOIN multi USING (h) JOIN chunks c USING (passage_id)
),
ranked AS (
    SELECT passage_id, doc_id, first_value(passage_id) OVER w AS kept_passage_id, row_number() OVER w AS r
    FROM cand
    WINDOW w AS (PARTITION BY h, norm ORDER BY passage_id)
)
SELECT passage_id, doc_id, kept_passage_id
FROM ranked
WHERE r > 1
ORDER BY passage_id

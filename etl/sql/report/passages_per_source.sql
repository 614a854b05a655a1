-- Documents and passages per source, with passage lengths.
-- Columns: source, documents, passages, avg/max passages per document, avg/median passage chars.
WITH per_doc AS (
    SELECT source, doc_id, count(*) AS n_passages FROM passages GROUP BY source, doc_id
),
docs AS (
    SELECT source, count(*) AS documents, sum(n_passages)::BIGINT AS passages,
           round(avg(n_passages), 2) AS avg_passages_per_doc, max(n_passages) AS max_passages_per_doc
    FROM per_doc GROUP BY source
),
lengths AS (
    SELECT source, round(avg(n_chars), 1) AS avg_passage_chars, median(n_chars) AS median_passage_chars
    FROM passages GROUP BY source
)
SELECT d.*, l.avg_passage_chars, l.median_passage_chars
FROM docs d JOIN lengths l USING (source)
ORDER BY d.source

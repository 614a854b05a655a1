-- Distribution of passages per document, by source (documents with 20 or more passages share the
-- last bucket). Columns: source, passages (1-20, 20 = 20+), documents.
SELECT source, least(n_passages, 20) AS passages, count(*) AS documents
FROM (SELECT source, doc_id, count(*) AS n_passages FROM passages GROUP BY source, doc_id)
GROUP BY ALL
ORDER BY source, passages

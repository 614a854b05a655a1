-- Documents, passages, queries and records per source.
SELECT d.source,
       count(DISTINCT d.doc_id) AS documents,
       (SELECT count(*) FROM passages p WHERE p.source = d.source) AS passages,
       round((SELECT avg(n_chars) FROM passages p WHERE p.source = d.source), 1) AS avg_passage_chars,
       (SELECT count(*) FROM queries q WHERE q.source = d.source) AS queries,
       (SELECT count(*) FROM examples e WHERE e.source = d.source) AS records
FROM documents d GROUP BY d.source ORDER BY d.source

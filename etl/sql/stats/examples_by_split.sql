-- Records per split and query method, with docs per record.
SELECT split, method, count(*) AS records, min(len(passage_ids)) AS min_docs, max(len(passage_ids)) AS max_docs
FROM examples GROUP BY ALL ORDER BY split, method

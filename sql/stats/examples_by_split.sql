-- Records per split and query method, with docs per record.
SELECT split, method, count(*) AS records, min(len(docs)) AS min_docs, max(len(docs)) AS max_docs
FROM examples GROUP BY ALL ORDER BY split, method

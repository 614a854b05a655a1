-- Query-file lines ([[query_files]]) that did not become queries, by file name and reason.
-- Columns: name, reason, n.
SELECT name, reject_reason AS reason, count(*) AS n
FROM user_queries
WHERE reject_reason IS NOT NULL
GROUP BY ALL
ORDER BY name, n DESC

-- Queries per method and source, and how many became training records.
-- Columns: method, source, queries, records, dropped, pct_kept.
SELECT q.method, q.source, count(*) AS queries, count(e.query_id) AS records,
       count(*) - count(e.query_id) AS dropped,
       round(100.0 * count(e.query_id) / count(*), 1) AS pct_kept
FROM queries q
LEFT JOIN examples e USING (query_id)
GROUP BY q.method, q.source
ORDER BY q.method, q.source

-- Records that did not become documents, by stage, source and reason, with one example.
-- Columns: stage, source, reason, n, example.
SELECT stage, source, reason, count(*) AS n,
       left(regexp_replace(coalesce(min(title), min(excerpt), ''), '\s+', ' ', 'g'), 60) AS example
FROM quarantine
GROUP BY stage, source, reason
ORDER BY stage, source, n DESC, reason

-- Records that did not become documents, by stage and reason.
SELECT stage, source, reason, count(*) AS n FROM quarantine GROUP BY ALL ORDER BY stage, source, n DESC

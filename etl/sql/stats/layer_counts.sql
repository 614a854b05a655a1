-- Rows per pipeline layer.
SELECT 'raw_documents' AS layer, count(*) AS n_rows FROM raw_documents
UNION ALL SELECT 'quarantine', count(*) FROM quarantine
UNION ALL SELECT 'documents', count(*) FROM documents
UNION ALL SELECT 'passages', count(*) FROM passages
UNION ALL SELECT 'queries', count(*) FROM queries
UNION ALL SELECT 'candidates', count(*) FROM candidates
UNION ALL SELECT 'examples', count(*) FROM examples

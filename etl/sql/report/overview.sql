-- Rows per layer and records per split: the funnel from records read to training records.
-- Columns: step, n.
SELECT 'records read (raw_documents)' AS step, count(*) AS n FROM raw_documents
UNION ALL SELECT 'quarantined', count(*) FROM quarantine
UNION ALL SELECT 'documents', count(*) FROM documents
UNION ALL SELECT 'passages', count(*) FROM passages
UNION ALL SELECT 'queries', count(*) FROM queries
UNION ALL SELECT 'candidates considered', count(*) FROM candidates
UNION ALL SELECT 'candidates scored by the teacher', count(*) FROM scored_candidates
UNION ALL SELECT 'training records (examples)', count(*) FROM examples
UNION ALL SELECT 'records in train', count(*) FROM examples WHERE split = 'train'
UNION ALL SELECT 'records in val', count(*) FROM examples WHERE split = 'val'

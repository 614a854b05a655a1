-- K-means clusters of passage embeddings: size, documents, sources, and how many training records
-- have their positive in the cluster. Columns: cluster_id, passages, documents, sources,
-- avg_centroid_distance, records.
WITH sizes AS (
    SELECT c.cluster_id, count(*) AS passages, count(DISTINCT p.doc_id) AS documents,
           string_agg(DISTINCT p.source, ', ' ORDER BY p.source) AS sources,
           round(avg(c.centroid_distance), 4) AS avg_centroid_distance
    FROM clusters c
    JOIN passages p USING (passage_id)
    GROUP BY c.cluster_id
),
positives AS (
    SELECT c.cluster_id, count(*) AS records
    FROM examples e
    JOIN clusters c ON c.passage_id = e.passage_ids[1]
    GROUP BY c.cluster_id
)
SELECT s.*, coalesce(p.records, 0) AS records
FROM sizes s
LEFT JOIN positives p USING (cluster_id)
ORDER BY s.passages DESC, s.cluster_id

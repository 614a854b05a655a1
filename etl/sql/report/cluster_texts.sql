-- Passage texts for the cluster term extraction (c-TF-IDF over Korean nouns), kept bounded so the
-- morphological analysis stays fast on large corpora: the getvariable('report_cluster_limit')
-- largest clusters (default 40, the ones the report lists), at most
-- getvariable('report_cluster_sample') passages per cluster (default 50, nearest the centroid first),
-- each cut to its first 600 characters. Columns: cluster_id, passage_id, text.
WITH largest AS (
    SELECT cluster_id
    FROM clusters
    GROUP BY cluster_id
    ORDER BY count(*) DESC, cluster_id
    LIMIT coalesce(getvariable('report_cluster_limit'), 40)
)
SELECT c.cluster_id, c.passage_id, left(p.text, 600) AS text
FROM clusters c
JOIN largest USING (cluster_id)
JOIN passages p USING (passage_id)
QUALIFY row_number() OVER (PARTITION BY c.cluster_id ORDER BY c.centroid_distance, c.passage_id)
        <= coalesce(getvariable('report_cluster_sample'), 50)
ORDER BY c.cluster_id, c.passage_id

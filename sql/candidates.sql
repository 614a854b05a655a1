-- Layer candidates: every candidate doc considered for every query, with its teacher similarity
-- and the filter that removed it (filter_reason NULL = usable).
--   positive  the query's positive (passage, or positive_text for first_sentence queries)
--   hard      usearch nearest neighbours of the query (layer neighbours), rank 1..top_k
--   related   random passages of the positive's own k-means cluster, outside the neighbour list
--   easy      random passages from other clusters, outside the neighbour list
-- teacher_sim = cosine similarity of the e5 query and passage embeddings (the bi-encoder teacher).
-- Random draws are md5(query_id, draw, seed) over passage indexes: deterministic, no cross join.
--
-- @unique: query_id, role, rank
-- @not_null: query_id, passage_id, role, rank, teacher_sim
-- @check: isfinite(teacher_sim)
WITH q AS (
    SELECT q.query_id, q.doc_id, q.positive_passage_id, lower(d.title) AS title_key,
           qe.embedding AS q_emb, coalesce(qe.positive_embedding, pe.embedding) AS pos_emb
    FROM queries q
    JOIN query_embeddings qe USING (query_id)
    JOIN passage_embeddings pe ON pe.passage_id = q.positive_passage_id
    JOIN documents d ON d.doc_id = q.doc_id
),
pos AS (
    SELECT query_id, positive_passage_id AS passage_id, 'positive' AS role, 0 AS rank,
           list_cosine_similarity(q_emb, pos_emb) AS teacher_sim, NULL::VARCHAR AS filter_reason
    FROM q
),
lib AS (  -- every passage with its global and in-cluster index, for deterministic random draws
    SELECT p.passage_id, p.doc_id, lower(p.title) AS title_key, c.cluster_id,
           row_number() OVER (ORDER BY p.passage_id) - 1 AS idx,
           row_number() OVER (PARTITION BY c.cluster_id ORDER BY p.passage_id) - 1 AS cidx,
           count(*) OVER (PARTITION BY c.cluster_id) AS csize
    FROM passages p JOIN clusters c USING (passage_id)
),
qx AS (  -- query + positive's cluster + positive similarity
    SELECT q.*, l.cluster_id AS pos_cluster, l.csize AS pos_csize, pos.teacher_sim AS pos_sim
    FROM q JOIN lib l ON l.passage_id = q.positive_passage_id JOIN pos USING (query_id)
),
hard AS (
    SELECT n.query_id, n.passage_id, 'hard' AS role, n.rank, n.similarity AS teacher_sim,
        CASE
            WHEN n.passage_id = qx.positive_passage_id THEN 'is_positive'
            WHEN n.rank <= getvariable('skip_top') THEN 'rank_window'
            WHEN l.doc_id = qx.doc_id THEN 'same_document'
            WHEN l.title_key = qx.title_key THEN 'same_title'
            WHEN n.similarity >= qx.pos_sim THEN 'scored_above_positive'
        END AS filter_reason
    FROM neighbours n JOIN qx USING (query_id) JOIN lib l USING (passage_id)
),
n_lib AS (SELECT count(*) AS n FROM lib),
draws AS (
    SELECT qx.query_id, t.draw,
           (md5_number(qx.query_id || ':easy:' || t.draw || ':' || getvariable('seed')) % n_lib.n)::BIGINT AS idx,
           (md5_number(qx.query_id || ':related:' || t.draw || ':' || getvariable('seed')) % qx.pos_csize)::BIGINT AS cidx
    FROM qx, n_lib, range(getvariable('easy_pool')) t(draw)
),
easy_raw AS (
    SELECT d.query_id, l.passage_id, 'easy' AS role, d.draw + 1 AS rank, l.doc_id, l.title_key, l.cluster_id
    FROM draws d JOIN lib l ON l.idx = d.idx
),
related_raw AS (
    SELECT d.query_id, l.passage_id, 'related' AS role, d.draw + 1 AS rank, l.doc_id, l.title_key, l.cluster_id
    FROM draws d JOIN qx USING (query_id) JOIN lib l ON l.cluster_id = qx.pos_cluster AND l.cidx = d.cidx
    WHERE getvariable('n_related') > 0
),
drawn AS (
    SELECT r.query_id, r.passage_id, r.role, r.rank,
           list_cosine_similarity(qx.q_emb, pe.embedding) AS teacher_sim,
           CASE
               WHEN r.passage_id = qx.positive_passage_id THEN 'is_positive'
               WHEN r.doc_id = qx.doc_id THEN 'same_document'
               WHEN r.title_key = qx.title_key THEN 'same_title'
               WHEN r.role = 'easy' AND r.cluster_id = qx.pos_cluster THEN 'same_cluster'
               WHEN EXISTS (SELECT 1 FROM neighbours n WHERE n.query_id = r.query_id AND n.passage_id = r.passage_id)
                   THEN 'in_neighbours'
               WHEN row_number() OVER (PARTITION BY r.query_id, r.role, r.passage_id ORDER BY r.rank) > 1
                   THEN 'duplicate_draw'
           END AS filter_reason
    FROM (SELECT * FROM easy_raw UNION ALL SELECT * FROM related_raw) r
    JOIN qx USING (query_id)
    JOIN passage_embeddings pe ON pe.passage_id = r.passage_id
)
SELECT * FROM pos
UNION ALL SELECT * FROM hard
UNION ALL SELECT * FROM drawn
ORDER BY query_id, role, rank

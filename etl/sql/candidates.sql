-- Layer candidates: every candidate doc considered for every query, with its bi-encoder similarity
-- and the structural filter that removed it (filter_reason NULL = usable). Score-based filters
-- (margins to the positive) come later, in scored_candidates.sql, once the teacher has scored.
--   positive  the query's positive (passage, or positive_text for first_sentence queries); for a
--             query with several known positives (queries.positive_passage_ids: query files naming
--             documents or several passages), the known positive most similar to the query
--   hard      usearch nearest neighbours of the query (layer neighbours), rank 1..search_depth
--   related   random passages of the positive's own k-means cluster, outside the rank window
--   easy      random passages from other clusters, outside the rank window (examples.sql also
--             keeps every related/easy pick below every hard pick, so none can repeat a deep hard pick)
-- bi_score = cosine similarity of the e5 query and passage embeddings (the bi-encoder score; the
-- teacher scores later, in teacher_scores, where kind = "biencoder" takes this very value).
-- Cosines come from two functions the runner registers (etl/mine.py CosineUDFs):
--   query_passage_cos(q_row, p_row), passage_passage_cos(p_row, p_row)
-- over the exported embedding matrices (row = position in id order), so no embedding list is ever
-- joined here: every row carries integers, and memory stays bounded at millions of queries.
-- Filters: is_positive, known_positive (another known positive of the query: never a negative),
-- rank_window (rank <= skip_top), same_document (the positive's document or another document named
-- for the query), same_title (the same subject
-- in another source; both switched by filters.exclude_same_document), near_duplicate (same normalized text as the positive passage, compared by
-- md5 of the text without whitespace, lower-cased; or cosine to it >= filters.near_duplicate_cosine), same_cluster (easy only), in_neighbours, duplicate_draw, and on
-- the positive itself positive_rank_too_low (more than filters.positive_max_rank passages of other
-- documents score above it: the query does not retrieve its own passage; only where the query's
-- drop_low_rank is set: generated queries by default, never a query file unless it asks).
-- Decontamination (layer decontamination, etl/decontaminate.py): contaminated (a candidate equal to
-- or overlapping an evaluation passage: never a negative); on the positive, contaminated_query (the
-- query equals an evaluation question, normalized) and contaminated_positive (the positive is such a
-- passage; a query with several known positives takes a clean one when it has one): the query is dropped.
-- Random draws are md5(query_id, draw, seed) over passage indexes: deterministic, no cross join.
-- (The modulus is cast to UHUGEINT: md5_number is UHUGEINT, and UHUGEINT % BIGINT is computed in
-- DOUBLE, which rounds away the low bits: on 40 passages every draw fell on one of 5 of them.)
--
-- they are built per query as lists, so the in_neighbours and duplicate_draw checks are list
-- lookups within the query's row (a semi-join and a window over all draws ran out of memory at 1M docs).
--
-- @unique: query_id, role, rank
-- @not_null: query_id, passage_id, role, rank, bi_score
-- @check: isfinite(bi_score)
WITH prow AS (  -- row of each passage in embeddings/document_embeddings.npy (exported in passage_id order)
    SELECT passage_id, row_number() OVER (ORDER BY passage_id) - 1 AS p_row FROM passage_embeddings
),
qrow AS (  -- row of each query in embeddings/query_embeddings.npy; cosine to a modified positive's text
    SELECT query_id, row_number() OVER (ORDER BY query_id) - 1 AS q_row, fixed_pos_sim
    FROM (SELECT query_id,
                 -- (list_transform: list_cosine_similarity rejects a column holding NULL lists,
                 -- even on rows where the list is not NULL; DuckDB 2.0)
                 list_cosine_similarity(embedding, list_transform(positive_embedding, lambda x: x)) AS fixed_pos_sim
          FROM query_embeddings)
),
q0 AS (
    SELECT q.query_id, q.positive_passage_id, q.positive_fixed, q.positive_passage_ids, q.drop_low_rank,
           lower(trim(regexp_replace(nfc_normalize(q.query), '[\s\pZ\x{0B}\x{1C}-\x{1F}\x{85}]+', ' ', 'g')))
               IN (SELECT key FROM decontamination WHERE kind = 'question') AS query_contaminated,
           list_transform(q.positive_doc_ids, lambda x: md5_number(x)) AS named_doc_keys, r.q_row, r.fixed_pos_sim
    FROM queries q
    JOIN qrow r USING (query_id)
),
best AS (  -- the known positive most similar to the query, for queries without a fixed positive
    SELECT k.query_id, arg_max(k.passage_id, query_passage_cos(k.q_row, pr.p_row)) AS passage_id
    FROM (SELECT query_id, q_row, unnest(positive_passage_ids) AS passage_id FROM q0 WHERE NOT positive_fixed) k
    JOIN prow pr ON pr.passage_id = k.passage_id
    WHERE k.passage_id NOT IN (SELECT passage_id FROM decontamination WHERE kind = 'passage')
    GROUP BY k.query_id
),
lib AS (  -- every passage with its global and in-cluster index, for deterministic random draws
    SELECT p.passage_id, md5_number(p.doc_id) AS doc_key, md5_number(lower(p.title)) AS title_key, c.cluster_id,
           md5_number(lower(regexp_replace(p.text, '\s+', '', 'g'))) AS text_key, pr.p_row,
           p.passage_id IN (SELECT passage_id FROM decontamination WHERE kind = 'passage') AS contaminated,
           row_number() OVER (ORDER BY p.passage_id) - 1 AS idx,
           row_number() OVER (PARTITION BY c.cluster_id ORDER BY p.passage_id) - 1 AS cidx,
           count(*) OVER (PARTITION BY c.cluster_id) AS csize
    FROM passages p JOIN clusters c USING (passage_id) JOIN prow pr USING (passage_id)
),
qx AS (  -- query + resolved positive: its row, text key, cluster, and the query-positive similarity;
    -- doc_keys: the positive's document and every document named for the query
    SELECT q0.query_id, l.doc_key, list_distinct(list_append(q0.named_doc_keys, l.doc_key)) AS doc_keys,
           l.title_key, q0.q_row, q0.positive_passage_ids AS known_ids, q0.drop_low_rank,
           q0.query_contaminated, l.contaminated AS pos_contaminated,
           coalesce(best.passage_id, q0.positive_passage_id) AS positive_passage_id,
           l.p_row AS pos_row, l.text_key AS pos_text_key, l.cluster_id AS pos_cluster, l.csize AS pos_csize,
           coalesce(q0.fixed_pos_sim, query_passage_cos(q0.q_row, l.p_row)) AS pos_sim
    FROM q0
    LEFT JOIN best USING (query_id)
    JOIN lib l ON l.passage_id = coalesce(best.passage_id, q0.positive_passage_id)
),
pos_rank AS (  -- 1 + passages of other documents scoring above the positive (capped by search_depth)
    SELECT qx.query_id, 1 + count(l.passage_id) AS positive_rank
    FROM qx
    LEFT JOIN neighbours n ON n.query_id = qx.query_id AND n.similarity > qx.pos_sim
    LEFT JOIN lib l ON l.passage_id = n.passage_id AND NOT list_contains(qx.doc_keys, l.doc_key)
                   AND l.title_key <> qx.title_key AND NOT list_contains(qx.known_ids, l.passage_id)
    GROUP BY qx.query_id
),
pos AS (
    SELECT qx.query_id, qx.positive_passage_id AS passage_id, 'positive' AS role, 0 AS rank,
           qx.pos_sim AS bi_score,
           CASE WHEN qx.query_contaminated THEN 'contaminated_query'
                WHEN qx.pos_contaminated THEN 'contaminated_positive'
                WHEN getvariable('positive_max_rank') > 0 AND qx.drop_low_rank
                     AND r.positive_rank > getvariable('positive_max_rank')
                THEN 'positive_rank_too_low' END AS filter_reason,
           r.positive_rank
    FROM qx JOIN pos_rank r USING (query_id)
),
hard AS (
    SELECT n.query_id, n.passage_id, 'hard' AS role, n.rank, n.similarity AS bi_score,
        CASE
            WHEN n.passage_id = qx.positive_passage_id THEN 'is_positive'
            WHEN list_contains(qx.known_ids, n.passage_id) THEN 'known_positive'
            WHEN l.contaminated THEN 'contaminated'
            WHEN n.rank <= getvariable('skip_top') THEN 'rank_window'
            WHEN getvariable('exclude_same_document') AND list_contains(qx.doc_keys, l.doc_key) THEN 'same_document'
            WHEN getvariable('exclude_same_document') AND l.title_key = qx.title_key THEN 'same_title'
            WHEN l.text_key = qx.pos_text_key
                 OR passage_passage_cos(l.p_row, qx.pos_row) >= getvariable('near_duplicate_cosine')
                THEN 'near_duplicate'
        END AS filter_reason,
        NULL::BIGINT AS positive_rank
    FROM neighbours n
    JOIN qx USING (query_id)
    JOIN lib l USING (passage_id)
),
n_lib AS (SELECT count(*) AS n FROM lib),
nb AS (  -- each query's passages in the rank window, as a list (the in_neighbours filter is a list lookup)
    SELECT n.query_id, list(l.idx) AS nb_idx
    FROM neighbours n JOIN lib l USING (passage_id)
    WHERE n.rank <= getvariable('top_k')
    GROUP BY n.query_id
),
qd AS NOT MATERIALIZED (  -- per query: its random draws as lists of passage / in-cluster indexes
    SELECT qx.*, nb.nb_idx,
           list_transform(range(getvariable('easy_pool')), lambda d:
               (md5_number(qx.query_id || ':easy:' || d || ':' || getvariable('seed')) % n_lib.n::UHUGEINT)::BIGINT) AS easy_idx,
           list_transform(range(getvariable('easy_pool')), lambda d:
               (md5_number(qx.query_id || ':related:' || d || ':' || getvariable('seed')) % qx.pos_csize::UHUGEINT)::BIGINT) AS related_cidx
    FROM qx CROSS JOIN n_lib LEFT JOIN nb USING (query_id)
),
-- one row per draw; `repeated` = the same passage was drawn earlier for this query and role
easy_raw AS (
    SELECT d.*, 'easy' AS role, l.passage_id, l.doc_key AS c_doc_key, l.title_key AS c_title_key, l.cluster_id,
           l.text_key, l.p_row, l.idx AS lib_idx, l.contaminated
    FROM (SELECT query_id, q_row, positive_passage_id, known_ids, doc_keys, title_key, pos_row, pos_text_key, pos_cluster, nb_idx,
                 unnest(easy_idx) AS key, generate_subscripts(easy_idx, 1) AS rank,
                 list_position(easy_idx, unnest(easy_idx)) < generate_subscripts(easy_idx, 1) AS repeated
          FROM qd WHERE getvariable('n_easy') > 0) d
    JOIN lib l ON l.idx = d.key
),
related_raw AS (
    SELECT d.*, 'related' AS role, l.passage_id, l.doc_key AS c_doc_key, l.title_key AS c_title_key, l.cluster_id,
           l.text_key, l.p_row, l.idx AS lib_idx, l.contaminated
    FROM (SELECT query_id, q_row, positive_passage_id, known_ids, doc_keys, title_key, pos_row, pos_text_key, pos_cluster, nb_idx,
                 unnest(related_cidx) AS key, generate_subscripts(related_cidx, 1) AS rank,
                 list_position(related_cidx, unnest(related_cidx)) < generate_subscripts(related_cidx, 1) AS repeated
          FROM qd WHERE getvariable('n_related') > 0) d
    JOIN lib l ON l.cluster_id = d.pos_cluster AND l.cidx = d.key
),
drawn AS (
    SELECT r.query_id, r.passage_id, r.role, r.rank,
           query_passage_cos(r.q_row, r.p_row) AS bi_score,
           CASE
               WHEN r.passage_id = r.positive_passage_id THEN 'is_positive'
               WHEN list_contains(r.known_ids, r.passage_id) THEN 'known_positive'
               WHEN r.contaminated THEN 'contaminated'
               WHEN getvariable('exclude_same_document') AND list_contains(r.doc_keys, r.c_doc_key) THEN 'same_document'
               WHEN getvariable('exclude_same_document') AND r.c_title_key = r.title_key THEN 'same_title'
               WHEN r.text_key = r.pos_text_key
                    OR passage_passage_cos(r.p_row, r.pos_row) >= getvariable('near_duplicate_cosine')
                   THEN 'near_duplicate'
               WHEN r.role = 'easy' AND r.cluster_id = r.pos_cluster THEN 'same_cluster'
               WHEN list_contains(r.nb_idx, r.lib_idx) THEN 'in_neighbours'
               WHEN r.repeated THEN 'duplicate_draw'
           END AS filter_reason,
           NULL::BIGINT AS positive_rank
    FROM (SELECT * FROM easy_raw UNION ALL SELECT * FROM related_raw) r
)
-- No ORDER BY: this layer is ~77 rows per query (hundreds of millions at full scale) and every
-- reader orders what it needs; the sort alone ran out of memory at memory_limit 3GB on 100k docs.
SELECT * FROM pos
UNION ALL SELECT * FROM hard
UNION ALL SELECT * FROM drawn

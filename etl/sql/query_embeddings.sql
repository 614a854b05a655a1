-- Layer query_embeddings: the e5 "query: " embedding of every query, and for queries whose positive
-- is a modified passage (first_sentence: the sentence removed) the "passage: " embedding of that text.
-- Cache key as in passage_embeddings.sql: sha256(embedding_cache_key || e5 input).
-- @unique: query_id
-- @not_null: query_id, embedding
-- @check: len(embedding) = getvariable('embedding_dim')
-- @check: positive_embedding IS NULL OR len(positive_embedding) = getvariable('embedding_dim')
WITH todo AS (
    SELECT q.query_id, q.query, q.positive_text, cq.embedding AS cached_q, cp.embedding AS cached_p
    FROM queries q
    LEFT JOIN embedding_cache cq ON cq.text_hash = sha256(getvariable('embedding_cache_key') || 'query: ' || q.query)
    LEFT JOIN embedding_cache cp ON q.positive_text IS NOT NULL
         AND cp.text_hash = sha256(getvariable('embedding_cache_key') || 'passage: ' || q.positive_text)
    ORDER BY length(q.query), q.query_id
)
SELECT query_id,
       CASE WHEN cached_q IS NULL THEN embed_query(query)::FLOAT[] ELSE cached_q END AS embedding,
       CASE WHEN positive_text IS NULL THEN NULL
            WHEN cached_p IS NULL THEN embed_passage(positive_text)::FLOAT[]
            ELSE cached_p END AS positive_embedding
FROM todo
ORDER BY query_id

-- Layer passage_embeddings: one e5 "passage: " embedding per passage (FLOAT list, L2-normalized).
-- embed_passage(text) is a Python UDF registered by the runner (etl/embed.py); it is called only
-- for texts missing from the embedding cache (CASE evaluates it on the cache misses alone). The cache
-- key is sha256(embedding_cache_key || e5 input): the variable is etl.embed.cache_key_prefix (model,
-- embedding.max_chars, key version), so a vector cached under other settings is a miss.
-- Input is fed shortest-first so each UDF call gets similar lengths (less padding).
-- @unique: passage_id
-- @not_null: passage_id, embedding
-- @check: len(embedding) = getvariable('embedding_dim')
WITH todo AS (
    SELECT p.passage_id, p.text, c.embedding AS cached
    FROM passages p
    LEFT JOIN embedding_cache c ON c.text_hash = sha256(getvariable('embedding_cache_key') || 'passage: ' || p.text)
    ORDER BY length(p.text), p.passage_id
),
embedded AS (
    SELECT passage_id,
           CASE WHEN cached IS NULL THEN embed_passage(text)::FLOAT[] ELSE cached END AS embedding
    FROM todo
)
SELECT * FROM embedded ORDER BY passage_id

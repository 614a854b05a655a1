-- Layer queries: one row per (query, positive passage).
--   title           the document title -> the document's first passage (its lead / summary).
--   first_sentence  the first sentence of the first passage -> the rest of that passage
--                   (positive_text: the sentence is removed, else the pair would be trivial).
--   llm             questions generated per passage by an LLM (layer llm_questions, etl/llm.py).
--   query_file      user questions from [[query_files]] (loaded into user_queries by the runner).
-- query_id = <method>:<md5 of query text and positive passage id>, stable across runs.
-- Methods are chosen by queries.methods; queries.max_per_source caps each (source, method).
--
-- @unique: query_id
-- positive_fixed = false: the positive is the document's passage the teacher scores highest (resolved
-- in candidates.sql, once embeddings exist); positive_passage_id is then the doc's first passage.
-- @not_null: query_id, method, query, doc_id, source, positive_passage_id, positive_fixed
-- @check: length(query) BETWEEN getvariable('query_min_chars') AND getvariable('query_max_chars')
-- @check: positive_text IS NULL OR length(positive_text) >= getvariable('query_min_positive_chars')
WITH lead AS (
    SELECT p.passage_id, p.doc_id, p.source, p.title, p.text
    FROM passages p
    WHERE p.chunk_no = 0
),
title_q AS (  -- skips documents whose title was derived (documents.title_derived: the record had none)
    SELECT 'title' AS method, l.title AS query, l.doc_id, l.source, l.passage_id AS positive_passage_id,
           NULL::VARCHAR AS positive_text, true AS positive_fixed
    FROM lead l
    ANTI JOIN (SELECT doc_id FROM documents WHERE title_derived) dt ON dt.doc_id = l.doc_id
    WHERE list_contains(getvariable('query_methods'), 'title')
),
first_sent AS (  -- the first sentence ending in . ! ? 。 … with >= 10 characters (skips infobox lines)
    SELECT doc_id, source, passage_id, text,
           list_filter(
               string_split(regexp_replace(text, '([.!?。…]) +|\s*\n\s*', '\1' || chr(31), 'g'), chr(31)),
               lambda s: length(s) >= 10 AND regexp_matches(s, '[.!?。…]$'))[1] AS sentence
    FROM lead
    WHERE list_contains(getvariable('query_methods'), 'first_sentence')
),
first_q AS (
    SELECT 'first_sentence' AS method, sentence AS query, doc_id, source, passage_id AS positive_passage_id,
           trim(regexp_replace(left(text, strpos(text, sentence) - 1) || substr(text, strpos(text, sentence) + length(sentence)),
                               '  +', ' ', 'g')) AS positive_text, true AS positive_fixed
    FROM first_sent
    WHERE sentence IS NOT NULL
),
llm_q AS (
    SELECT 'llm' AS method, query, doc_id, source, passage_id AS positive_passage_id, NULL::VARCHAR AS positive_text,
           true AS positive_fixed
    FROM llm_questions
    WHERE status = 'ok' AND list_contains(getvariable('query_methods'), 'llm')
),
file_q AS (  -- one row per distinct query (its first usable target); user_queries has one row per (line, target)
    SELECT 'query_file' AS method, query, doc_id, source, coalesce(passage_id, doc_id || '#0') AS positive_passage_id,
           NULL::VARCHAR AS positive_text, passage_id IS NOT NULL AS positive_fixed
    FROM user_queries
    WHERE reject_reason IS NULL
    QUALIFY row_number() OVER (PARTITION BY query ORDER BY name, file, line_no, target_no) = 1
),
all_q AS (
    SELECT * FROM title_q
    UNION ALL SELECT * FROM first_q
    UNION ALL SELECT * FROM llm_q
    UNION ALL SELECT * FROM file_q
),
valid AS (
    SELECT method || ':' || left(md5(query || chr(31) || positive_passage_id), 16) AS query_id, *
    FROM all_q
    WHERE length(query) BETWEEN getvariable('query_min_chars') AND getvariable('query_max_chars')
      AND (positive_text IS NULL OR length(positive_text) >= getvariable('query_min_positive_chars'))
),
capped AS (
    SELECT *, row_number() OVER (PARTITION BY source, method ORDER BY md5(query_id || getvariable('seed'))) AS pick
    FROM valid
)
SELECT query_id, method, query, doc_id, source, positive_passage_id, positive_text, positive_fixed
FROM capped
WHERE getvariable('query_max_per_source') = 0 OR pick <= getvariable('query_max_per_source')
ORDER BY query_id

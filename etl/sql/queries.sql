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
title_q AS (
    SELECT 'title' AS method, title AS query, doc_id, source, passage_id AS positive_passage_id,
           NULL::VARCHAR AS positive_text, true AS positive_fixed
    FROM lead
    WHERE list_contains(getvariable('query_methods'), 'title')
),
first_sent AS (
    -- the article's opening sentence: the first sentence (ends in . ! ? 。 … then a space or the line end, >= 10
    -- characters) that opens a paragraph of the document (clean_documents keeps paragraph breaks, which passages fold
    -- into line breaks; a heading, a table and a quote block end a paragraph). Table rows (cells joined by ' | ') are
    -- skipped, and so are paragraphs that open with a non-sentence: an infobox line, a code block's first line (the
    -- note right under a code block is in the code's paragraph), a quote. Its passage is the first of the document's
    -- first 8 that holds it. A document without one (or whose sentence was cut between passages) falls back to the
    -- first such sentence anywhere in its lead passage outside table rows.
    SELECT doc_id, source, passage_id, text, sentence FROM (
        SELECT l.doc_id, l.source,
               coalesce(p.passage_id, l.passage_id) AS passage_id, coalesce(p.text, l.text) AS text,
               CASE WHEN p.passage_id IS NOT NULL THEN o.sentence ELSE list_filter(
                   string_split(regexp_replace(array_to_string(list_filter(string_split(l.text, chr(10)),
                                                                           lambda line: NOT contains(line, ' | ')), chr(10)),
                                               '([.!?。…]) +|\s*\n\s*', '\1' || chr(31), 'g'), chr(31)),
                   lambda s: length(s) >= 10 AND regexp_matches(s, '[.!?。…]$'))[1] END AS sentence,
               row_number() OVER (PARTITION BY l.doc_id ORDER BY p.chunk_no NULLS LAST) AS pick
        FROM lead l
        LEFT JOIN (
            SELECT doc_id, list_filter(list_transform(
                       list_filter(list_transform(string_split(left(text, 4000), chr(10) || chr(10)),
                                                  lambda para: split_part(para, chr(10), 1)),
                                   lambda line: NOT contains(line, ' | ')),
                       lambda line: regexp_extract(line, '^(.*?[.!?。…])(?: |$)', 1)),
                   lambda s: length(s) >= 10)[1] AS sentence
            FROM documents
        ) o USING (doc_id)
        LEFT JOIN passages p ON p.doc_id = l.doc_id AND p.chunk_no < 8 AND contains(p.text, o.sentence)
        WHERE list_contains(getvariable('query_methods'), 'first_sentence')
    )
    WHERE pick = 1
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
file_q AS (
    SELECT 'query_file' AS method, query, doc_id, source, positive_passage_id, NULL::VARCHAR AS positive_text,
           positive_fixed
    FROM user_queries
    WHERE reject_reason IS NULL
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

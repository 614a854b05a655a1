-- Layer queries: one row per query.
--   title           the document title -> the document's first passage (its lead / summary).
--   first_sentence  the first sentence of the first passage -> the rest of that passage
--                   (positive_text: the sentence is removed, else the pair would be trivial).
--   llm             questions generated per passage by an LLM (layer llm_questions, etl/llm.py).
--   query_file      user questions from [[query_files]] (layer user_queries): ONE row per distinct
--                   query text (query files are whitespace-normalized on load), however many lines
--                   or files name it. Every passage or document named for it is a known positive
--                   (positive_passage_ids: the named passages, and every passage of a named
--                   document; a deduplicated chunk resolves to its kept copy, see
--                   passage_duplicates.sql). The record's positive is the known positive the
--                   teacher scores highest (candidates.sql); the others are never its negatives.
--                   doc_id / source: the first target's document (by file and line), for the split.
-- query_id = <method>:<md5 of query text and positive passage id> (query_file: of the query text
-- alone), stable across runs. queries.max_per_source caps each (source, method).
-- drop_low_rank: whether positive_rank_too_low may drop the query (candidates.sql): the
-- filters.drop_low_rank_positives setting for generated queries (title, first sentence, llm), the
-- query file's own drop_low_rank_positives (default false: a human question file is trusted).
--
-- @unique: query_id
-- positive_fixed = false: the positive is the known positive the teacher scores highest (resolved in
-- candidates.sql, once embeddings exist); positive_passage_id is then the first of them.
-- @not_null: query_id, method, query, doc_id, source, positive_passage_id, positive_fixed, positive_passage_ids, positive_doc_ids, drop_low_rank
-- @check: len(positive_passage_ids) >= 1 AND list_contains(positive_passage_ids, positive_passage_id)
-- @check: positive_fixed = (len(positive_passage_ids) = 1)
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
uq AS (  -- usable query-file rows; a named passage that was deduplicated resolves to its kept copy
    SELECT u.name, u.file, u.line_no, u.target_no, u.query, u.doc_id, u.source, u.drop_low_rank,
           coalesce(dup.kept_passage_id, u.passage_id) AS passage_id
    FROM user_queries u
    LEFT JOIN passage_duplicates dup ON dup.passage_id = u.passage_id
    WHERE u.reject_reason IS NULL
),
targets AS (  -- the passages each target stands for: the named passage, or every chunk of a named document
    SELECT query, passage_id FROM uq WHERE passage_id IS NOT NULL
    UNION ALL
    SELECT uq.query, coalesce(dup.kept_passage_id, c.passage_id) AS passage_id
    FROM uq
    JOIN chunks c ON c.doc_id = uq.doc_id
    LEFT JOIN passage_duplicates dup ON dup.passage_id = c.passage_id
    WHERE uq.passage_id IS NULL
),
file_groups AS (
    SELECT g.query, g.doc_id, g.source, g.drop_low_rank, g.positive_doc_ids,
           list_sort(list_distinct(t.pids)) AS positive_passage_ids
    FROM (SELECT query,
                 arg_min(doc_id, [name, file, lpad(line_no::VARCHAR, 12, '0'), lpad(target_no::VARCHAR, 6, '0')]) AS doc_id,
                 arg_min(source, [name, file, lpad(line_no::VARCHAR, 12, '0'), lpad(target_no::VARCHAR, 6, '0')]) AS source,
                 bool_or(drop_low_rank) AS drop_low_rank,
                 list_sort(list_distinct(list(doc_id))) AS positive_doc_ids
          FROM uq GROUP BY query) g
    JOIN (SELECT query, list(passage_id) AS pids FROM targets GROUP BY query) t USING (query)
),
file_q AS (
    SELECT 'query_file' AS method, query, doc_id, source, positive_passage_ids[1] AS positive_passage_id,
           NULL::VARCHAR AS positive_text, len(positive_passage_ids) = 1 AS positive_fixed
    FROM file_groups
),
all_q AS (
    SELECT * FROM title_q
    UNION ALL SELECT * FROM first_q
    UNION ALL SELECT * FROM llm_q
    UNION ALL SELECT * FROM file_q
),
valid AS (
    SELECT CASE WHEN a.method = 'query_file' THEN 'query_file:' || left(md5(a.query), 16)
                ELSE a.method || ':' || left(md5(a.query || chr(31) || a.positive_passage_id), 16) END AS query_id,
           a.*,
           coalesce(f.positive_passage_ids, [a.positive_passage_id]) AS positive_passage_ids,
           coalesce(f.positive_doc_ids, [a.doc_id]) AS positive_doc_ids,
           coalesce(f.drop_low_rank, getvariable('drop_low_rank_positives')) AS drop_low_rank
    FROM all_q a
    LEFT JOIN file_groups f ON a.method = 'query_file' AND f.query = a.query
    WHERE length(a.query) BETWEEN getvariable('query_min_chars') AND getvariable('query_max_chars')
      AND (a.positive_text IS NULL OR length(a.positive_text) >= getvariable('query_min_positive_chars'))
),
capped AS (
    SELECT *, row_number() OVER (PARTITION BY source, method ORDER BY md5(query_id || getvariable('seed'))) AS pick
    FROM valid
)
SELECT query_id, method, query, doc_id, source, positive_passage_id, positive_text, positive_fixed,
       positive_passage_ids, positive_doc_ids, drop_low_rank
FROM capped
WHERE getvariable('query_max_per_source') = 0 OR pick <= getvariable('query_max_per_source')
ORDER BY query_id

-- Layer passages: documents cut into passages at sentence / line boundaries.
--
-- Computed per document with list functions: every step is a per-row projection (streams, runs in
-- parallel, bounded memory) and only the final passages are unnested. (A row-per-sentence version
-- with window functions and an ordered string_agg ran out of memory at 1M documents.)
--
-- 1. A sentence ends after . ! ? 。 … followed by a space, or at a line break (kept as a newline).
-- 2. A sentence longer than piece = max - target - min characters is cut into pieces of that size.
-- 3. Each piece gets its start offset in the document; passage = floor(offset / target).
-- 4. A trailing passage shorter than `min` is merged into the one before it.
--
-- @unique: passage_id
-- @not_null: passage_id, doc_id, source, title, chunk_no, text
-- @check: length(text) BETWEEN 1 AND getvariable('chunk_max_chars')
WITH split AS (
    -- rule 1, with chr(31) after each sentence end (the spaces after it dropped) and before each
    -- sentence that starts a line; a sentence that ends a line ends with '\n' or chr(30):
    -- * general case, one regexp pass: a line break with the whitespace around it (also right after
    --   a sentence end) becomes '\n' + chr(31) (same splits as replacing '\s*\n\s*' first and
    --   '([.!?。…]) +' second);
    -- * texts with no tab / form feed / CR and no space next to a line break (all texts cleaned by
    --   clean_documents.sql) take plain replace()s, ~4x cheaper than the regexp: each '\n' becomes
    --   chr(30) + chr(31), each end mark + space gets chr(31) instead of the space; the spaces left
    --   at a sentence start and the empty sentences of '\n\n' are dropped below, as the regexp would.
    SELECT doc_id, source, title,
           string_split(CASE
               WHEN contains(text, chr(9)) OR contains(text, chr(12)) OR contains(text, chr(13))
                    OR contains(text, ' ' || chr(10)) OR contains(text, chr(10) || ' ')
               THEN regexp_replace(text, '([.!?。…]) +(?:\s*(\n)\s*)?|\s*(\n)\s*', '\1\2\3' || chr(31), 'g')
               ELSE replace(replace(replace(replace(replace(replace(text, chr(10), chr(30) || chr(31)),
                        '. ', '.' || chr(31)), '! ', '!' || chr(31)), '? ', '?' || chr(31)), '。 ', '。' || chr(31)), '… ', '…' || chr(31))
           END, chr(31)) AS sents
    FROM documents
),
marked AS (  -- each sentence trimmed (chr(30) removed), followed by its separator: '\n' after a line end,
             -- else ' '; empty ones dropped. trim() decodes the whole string, so it runs only where needed.
    SELECT doc_id, source, title,
           list_filter(list_transform(sents, lambda s: (CASE WHEN contains(s, chr(10)) OR contains(s, chr(30)) THEN trim(replace(replace(s, chr(10), ''), chr(30), ''))
                                                     WHEN starts_with(s, ' ') OR ends_with(s, ' ') THEN trim(s) ELSE s END)
                           || CASE WHEN ends_with(s, chr(10)) OR ends_with(s, chr(30)) THEN chr(10) ELSE ' ' END),
                       lambda x: length(x) > 1) AS ms
    FROM split
),
pieces AS (  -- rule 2: over-long sentences cut into pieces of `piece` characters (+ ' '); the separator stays
             -- on the last piece (skipped for documents without an over-long sentence)
    SELECT doc_id, source, title,
           CASE WHEN list_max(list_transform(ms, lambda x: length(x))) <= getvariable('chunk_max_chars') - getvariable('chunk_target_chars') - getvariable('chunk_min_chars') + 1
                THEN ms
                ELSE flatten(list_transform(ms, lambda x: CASE WHEN length(x) <= getvariable('chunk_max_chars') - getvariable('chunk_target_chars') - getvariable('chunk_min_chars') + 1 THEN [x]
                    ELSE list_transform(
                        range(0, ceil((length(x) - 1) / (getvariable('chunk_max_chars') - getvariable('chunk_target_chars') - getvariable('chunk_min_chars')))::BIGINT),
                        lambda k: CASE WHEN k = ceil((length(x) - 1) / (getvariable('chunk_max_chars') - getvariable('chunk_target_chars') - getvariable('chunk_min_chars')))::BIGINT - 1
                                       THEN substr(x, 1 + k * (getvariable('chunk_max_chars') - getvariable('chunk_target_chars') - getvariable('chunk_min_chars')))
                                       ELSE substr(x, 1 + k * (getvariable('chunk_max_chars') - getvariable('chunk_target_chars') - getvariable('chunk_min_chars')),
                                                   getvariable('chunk_max_chars') - getvariable('chunk_target_chars') - getvariable('chunk_min_chars')) || ' ' END) END))
           END AS ps
    FROM marked
),
numbered AS (  -- rule 3: raw chunk of each piece = start offset // target (a piece's length includes its separator)
    SELECT doc_id, source, title, ps,
           list_transform(range(len(ps)), lambda i: (coalesce(list_sum(ln[1:i]), 0) // getvariable('chunk_target_chars'))::BIGINT) AS rc
    FROM (SELECT *, list_transform(ps, lambda x: length(x)) AS ln FROM pieces)
),
chunks AS (  -- pieces concatenated, with chr(31) (which no piece contains) before a piece whose raw chunk
             -- differs from the previous one; the spaces / newlines at the end of each chunk are cut in one
             -- regexp pass (rtrim per chunk decodes every chunk); then split at chr(31). Chunk numbers with
             -- no piece (possible when a piece is longer than target) produce no chunk.
    SELECT doc_id, source, title,
           list_filter(string_split(regexp_replace(array_to_string(
               list_transform(ps, lambda x, i: CASE WHEN i > 1 AND rc[i] <> rc[i - 1] THEN chr(31) || x ELSE x END), ''),
               '[ \n]+(\x1f|$)', '\1', 'g'), chr(31)), lambda t: length(t) > 0) AS ch
    FROM numbered
),
merged AS (  -- rule 4: a short trailing chunk joins the previous one
    SELECT doc_id, source, title,
           CASE WHEN len(ch) > 1 AND length(ch[len(ch)]) < getvariable('chunk_min_chars')
                THEN list_append(ch[1:len(ch) - 2], ch[len(ch) - 1] || chr(10) || ch[len(ch)])
                ELSE ch END AS ch
    FROM chunks
),
flat AS (
    SELECT doc_id, source, title, unnest(ch) AS text, generate_subscripts(ch, 1) - 1 AS chunk_no FROM merged
)
SELECT doc_id || '#' || chunk_no AS passage_id, doc_id, source, title, chunk_no::INTEGER AS chunk_no, text
FROM flat
ORDER BY passage_id

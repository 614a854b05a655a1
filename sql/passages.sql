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
    SELECT doc_id, source, title,
           string_split(regexp_replace(regexp_replace(text, '\s*\n\s*', chr(30) || chr(31), 'g'),
                                       '([.!?。…]) +', '\1' || chr(31), 'g'), chr(31)) AS sents
    FROM documents
),
marked AS (  -- (sentence, ends a line), empty sentences dropped
    SELECT doc_id, source, title,
           list_filter(list_transform(sents, lambda s: {'s': trim(replace(s, chr(30), '')), 'le': ends_with(s, chr(30))}),
                       lambda x: length(x.s) > 0) AS ms
    FROM split
),
pieces AS (  -- over-long sentences cut into pieces; the line end stays on the last piece
    SELECT doc_id, source, title,
           flatten(list_transform(ms, lambda x: list_transform(
               range(0, greatest(1, ceil(length(x.s) / (getvariable('chunk_max_chars') - getvariable('chunk_target_chars') - getvariable('chunk_min_chars')))::BIGINT)),
               lambda k: {'p': substr(x.s, 1 + k * (getvariable('chunk_max_chars') - getvariable('chunk_target_chars') - getvariable('chunk_min_chars')),
                                 getvariable('chunk_max_chars') - getvariable('chunk_target_chars') - getvariable('chunk_min_chars')),
                     'le': x.le AND k = ceil(length(x.s) / (getvariable('chunk_max_chars') - getvariable('chunk_target_chars') - getvariable('chunk_min_chars')))::BIGINT - 1}))) AS ps
    FROM marked
),
lens AS (
    SELECT *, list_transform(ps, lambda x: length(x.p) + 1) AS ln FROM pieces
),
numbered AS (  -- raw chunk of each piece = start offset // target
    SELECT doc_id, source, title, ps,
           list_transform(range(len(ps)), lambda i: (coalesce(list_sum(ln[1:i]), 0) // getvariable('chunk_target_chars'))::BIGINT) AS rc
    FROM lens
),
chunks AS (  -- pieces joined by a space, or a newline after a line end; the trailing separator is cut
    SELECT doc_id, source, title,
           -- chunk numbers with no piece (possible when a piece is longer than target) are skipped
           list_filter(list_transform(range(0, coalesce(list_max(rc) + 1, 0)), lambda c: rtrim(array_to_string(
               list_transform(list_filter(ps, lambda x, i: rc[i] = c), lambda x: x.p || CASE WHEN x.le THEN chr(10) ELSE ' ' END),
               ''), ' ' || chr(10))), lambda t: length(t) > 0) AS ch
    FROM numbered
),
merged AS (  -- a short trailing chunk joins the previous one
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

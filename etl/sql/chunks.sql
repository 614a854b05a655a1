-- Layer chunks: documents cut into passages at sentence / line boundaries (every chunk; layer
-- passages keeps the chunks whose normalized text is distinct across the corpus, see passages.sql).
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
-- @not_null: passage_id, doc_id, source, title, chunk_no, text, n_chars
-- @check: n_chars BETWEEN 1 AND getvariable('chunk_max_chars')
WITH split AS (
    -- rule 1: a sentence ends after . ! ? 。 … followed by a space, or at a line break; each sentence is
    -- cut out with its separator (' ' or '\n') as its last character.
    -- * fast path, plain replace()s (~4x cheaper than a regexp): texts with no tab / form feed / CR, no
    --   space next to a line break, no double space and no leading space (every text cleaned by
    --   clean_documents.sql): chr(31) goes after each '\n' and after each end mark + space; a text that
    --   ends in neither gets a ' ' so that its last sentence has a separator too;
    -- * general path (any other text), one regexp pass: a line break with the whitespace around it
    --   (also right after a sentence end) becomes '\n' + chr(31), an end mark + spaces the mark + chr(31);
    --   the sentences are trimmed and get their separator below.
    SELECT doc_id, source, title,
           CASE WHEN contains(text, chr(9)) OR contains(text, chr(12)) OR contains(text, chr(13))
                     OR contains(text, ' ' || chr(10)) OR contains(text, chr(10) || ' ') OR contains(text, '  ')
                     OR starts_with(text, ' ') OR contains(text, chr(30)) OR contains(text, chr(31))
                THEN list_filter(list_transform(
                         string_split(regexp_replace(text, '([.!?。…]) +(?:\s*(\n)\s*)?|\s*(\n)\s*', '\1\2\3' || chr(31), 'g'), chr(31)),
                         lambda s: (CASE WHEN contains(s, chr(10)) OR contains(s, chr(30)) THEN trim(replace(replace(s, chr(10), ''), chr(30), ''))
                                         WHEN starts_with(s, ' ') OR ends_with(s, ' ') THEN trim(s) ELSE s END)
                                   || CASE WHEN ends_with(s, chr(10)) OR ends_with(s, chr(30)) THEN chr(10) ELSE ' ' END),
                     lambda x: length(x) > 1)
                ELSE list_filter(string_split(replace(replace(replace(replace(replace(replace(
                         CASE WHEN ends_with(text, ' ') OR ends_with(text, chr(10)) THEN text ELSE text || ' ' END,
                         chr(10), chr(10) || chr(31)), '. ', '. ' || chr(31)), '! ', '! ' || chr(31)), '? ', '? ' || chr(31)),
                         '。 ', '。 ' || chr(31)), '… ', '… ' || chr(31)), chr(31)),
                     lambda x: x <> '' AND x <> ' ' AND x <> chr(10))  -- sentences with no text
           END AS ms
    FROM documents
),
pieces AS (  -- rule 2: over-long sentences cut into pieces of `piece` characters (+ ' '); the separator stays
             -- on the last piece (only in documents with an over-long sentence, flagged `cut`)
    SELECT doc_id, source, title, mx > getvariable('chunk_max_chars') - getvariable('chunk_target_chars') - getvariable('chunk_min_chars') + 1 AS cut,
           CASE WHEN NOT cut THEN ms
                ELSE flatten(list_transform(ms, lambda x: CASE WHEN length(x) <= getvariable('chunk_max_chars') - getvariable('chunk_target_chars') - getvariable('chunk_min_chars') + 1 THEN [x]
                    ELSE list_transform(
                        range(0, ceil((length(x) - 1) / (getvariable('chunk_max_chars') - getvariable('chunk_target_chars') - getvariable('chunk_min_chars')))::BIGINT),
                        lambda k: CASE WHEN k = ceil((length(x) - 1) / (getvariable('chunk_max_chars') - getvariable('chunk_target_chars') - getvariable('chunk_min_chars')))::BIGINT - 1
                                       THEN substr(x, 1 + k * (getvariable('chunk_max_chars') - getvariable('chunk_target_chars') - getvariable('chunk_min_chars')))
                                       ELSE substr(x, 1 + k * (getvariable('chunk_max_chars') - getvariable('chunk_target_chars') - getvariable('chunk_min_chars')),
                                                   getvariable('chunk_max_chars') - getvariable('chunk_target_chars') - getvariable('chunk_min_chars')) || ' ' END) END))
           END AS ps,
           CASE WHEN NOT cut THEN ml END AS ml
    FROM (SELECT *, coalesce(list_max(ml), 0) AS mx
          FROM (SELECT *, list_transform(ms, lambda x: length(x)) AS ml FROM split))
),
numbered AS (  -- rule 3: raw chunk of each piece = start offset // target (a piece's length includes its separator);
               -- the start offsets are the running sum of the lengths
    SELECT doc_id, source, title, ps, cut,
           list_transform(list_reduce(coalesce(ml, list_transform(ps, lambda x: length(x))),
                                      lambda acc, x: list_append(acc, acc[-1] + x), [0::BIGINT])[1:-2],
                          lambda o: o // getvariable('chunk_target_chars')) AS rc
    FROM pieces
),
chunks AS (  -- pieces concatenated, with chr(31) (which no piece contains) before a piece whose raw chunk differs
             -- from the previous one; then split at chr(31). A chunk ends without its trailing spaces / newlines: in
             -- documents without cut pieces those are exactly the last piece's one-character separator (a sentence
             -- never ends in a space or line break), dropped by left(x, -1); in documents with cut pieces (a piece cut
             -- out of a sentence may end in spaces or be only spaces) one regexp pass cuts them at each chunk's end.
             -- Chunk numbers with no piece (possible when a piece is longer than target) produce no chunk.
    SELECT doc_id, source, title,
           list_filter(CASE WHEN cut THEN string_split(regexp_replace(array_to_string(
                   list_transform(ps, lambda x, i: CASE WHEN i > 1 AND rc[i] <> rc[i - 1] THEN chr(31) || x ELSE x END), ''),
                   '[ \n]+(\x1f|$)', '\1', 'g'), chr(31))
               ELSE string_split(array_to_string(list_transform(ps, lambda x, i:
                   CASE WHEN i = len(ps) OR rc[i + 1] <> rc[i]
                        THEN CASE WHEN i > 1 AND rc[i] <> rc[i - 1] THEN chr(31) || left(x, -1) ELSE left(x, -1) END
                        ELSE CASE WHEN i > 1 AND rc[i] <> rc[i - 1] THEN chr(31) || x ELSE x END END), ''), chr(31))
           END, lambda t: t <> '') AS ch
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
SELECT doc_id || '#' || chunk_no AS passage_id, doc_id, source, title, chunk_no::INTEGER AS chunk_no, text,
       length(text) AS n_chars  -- characters; the reports and the contract read this instead of decoding every text
FROM flat
ORDER BY passage_id

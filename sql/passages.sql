-- Layer passages: documents cut into passages at sentence / line boundaries.
--
-- 1. A sentence ends after . ! ? 。 … followed by a space, or at a line break (kept as a newline).
-- 2. A sentence longer than piece = max - target - min characters is cut into pieces of that size.
-- 3. Each piece gets its start offset in the document; passage = floor(offset / target). So a
--    passage starts before `target` characters are filled and can overshoot by at most one piece.
-- 4. A trailing passage shorter than `min` is merged into the one before it.
-- Hence every passage is at most chunk.max_chars long (checked below).
--
-- @unique: passage_id
-- @not_null: passage_id, doc_id, source, title, chunk_no, text
-- @check: length(text) BETWEEN 1 AND getvariable('chunk_max_chars')
WITH params AS (
    SELECT getvariable('chunk_target_chars') AS target,
           getvariable('chunk_max_chars') - getvariable('chunk_target_chars') - getvariable('chunk_min_chars') AS piece,
           getvariable('chunk_min_chars') AS min_chars
),
split AS (
    SELECT doc_id, source, title,
           -- a line break becomes chr(30) + boundary, so passages keep their line structure
           string_split(regexp_replace(regexp_replace(text, '\s*\n\s*', chr(30) || chr(31), 'g'),
                                       '([.!?。…]) +', '\1' || chr(31), 'g'), chr(31)) AS sents
    FROM documents
),
sentences AS (
    SELECT doc_id, source, title, unnest(sents) AS sentence, generate_subscripts(sents, 1) AS sent_no
    FROM split
),
marked AS (  -- line_end: the sentence ended a line; joined back with a newline instead of a space
    SELECT doc_id, source, title, sent_no, ends_with(sentence, chr(30)) AS line_end,
           trim(replace(sentence, chr(30), '')) AS sentence
    FROM sentences
),
pieces AS (  -- over-long sentences cut into pieces of at most `piece` characters
    SELECT s.doc_id, s.source, s.title, s.sent_no, r.piece_no,
           substr(s.sentence, 1 + r.piece_no * p.piece, p.piece) AS piece,
           s.line_end AND r.piece_no = ceil(length(s.sentence) / p.piece)::BIGINT - 1 AS line_end
    FROM marked s, params p,
         LATERAL (SELECT unnest(range(0, greatest(1, ceil(length(s.sentence) / p.piece)::BIGINT))) AS piece_no) r
    WHERE length(s.sentence) > 0
),
offsets AS (
    SELECT *,
           coalesce(sum(length(piece) + 1) OVER (
               PARTITION BY doc_id ORDER BY sent_no, piece_no
               ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING), 0) AS start_offset
    FROM pieces
),
numbered AS (
    SELECT o.*, (o.start_offset // p.target)::BIGINT AS raw_chunk FROM offsets o, params p
),
chunks AS (
    SELECT doc_id, source, title, raw_chunk,
           -- pieces joined by a space, or a newline after a line end; the trailing separator is cut
           rtrim(string_agg(piece || CASE WHEN line_end THEN chr(10) ELSE ' ' END, '' ORDER BY sent_no, piece_no),
                 ' ' || chr(10)) AS text
    FROM numbered
    GROUP BY ALL
),
ranked AS (
    SELECT *,
           dense_rank() OVER (PARTITION BY doc_id ORDER BY raw_chunk) - 1 AS chunk_rank,
           count(*) OVER (PARTITION BY doc_id) AS n_chunks
    FROM chunks
),
merged AS (  -- a short trailing chunk joins the previous one
    SELECT doc_id, source, title,
           CASE WHEN chunk_rank = n_chunks - 1 AND chunk_rank > 0
                     AND length(text) < (SELECT min_chars FROM params)
                THEN chunk_rank - 1 ELSE chunk_rank END AS chunk_no,
           chunk_rank, text
    FROM ranked
)
SELECT doc_id || '#' || chunk_no AS passage_id, doc_id, source, title, chunk_no::INTEGER AS chunk_no,
       string_agg(text, chr(10) ORDER BY chunk_rank) AS text
FROM merged
GROUP BY doc_id, source, title, chunk_no
ORDER BY passage_id

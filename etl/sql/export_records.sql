-- Export records (not a layer): the JSONL records {query, docs, scores} of one batch of examples.
-- The export runs this once per batch: the examples of split getvariable('records_split') with
-- query_id in [getvariable('records_from'), getvariable('records_to')) (records_to NULL = no upper
-- bound), in query_id order, and appends each batch to train.jsonl / val.jsonl. Joining the texts
-- per batch bounds memory: one pass over every record holds all their text lists at once (~20 GB
-- at 1M documents); a batch of export.batch_records records holds ~11 KB each.
-- docs[1] is the positive: the query's own positive text where its method cut one (first_sentence,
-- query files with a fixed positive), else the passage; the rest are passages, in the slot order
-- of examples.passage_ids.
-- first_rank (export.first_rank; read only when getvariable('export_first_rank') is true, NULL
-- otherwise): the positive's rank among the passages of other documents retrieved for the query,
-- candidates.positive_rank (1 = nothing ranks above it; at most mining.search_depth + 1), which the
-- OpenSearch trainer's first_rank_thresh filters on. The export writes query, docs, scores (and
-- first_rank when asked) in query_id order; query_id itself is not written.
-- With judge.keep_as_positive the batch also holds the extra records of layer judged_examples
-- (skip_reason NULL) of the batch's queries: their docs[1] is the judged passage's text, their
-- first_rank the layer's, and their query_id column here is the layer's record_id, which sorts
-- right after its query's query_id (sql/judged_examples.sql), so each follows its query's record.
WITH ex AS (
    SELECT query_id, query_id AS record_key, true AS own_positive, NULL::BIGINT AS judged_first_rank,
           query, scores, passage_ids
    FROM examples
    WHERE split = getvariable('records_split')
      AND query_id >= getvariable('records_from')
      AND (getvariable('records_to') IS NULL OR query_id < getvariable('records_to'))
    UNION ALL
    SELECT query_id, record_id, false, first_rank, query, scores, passage_ids
    FROM judged_examples
    WHERE skip_reason IS NULL AND split = getvariable('records_split')
      AND query_id >= getvariable('records_from')
      AND (getvariable('records_to') IS NULL OR query_id < getvariable('records_to'))
),
slots AS (
    SELECT record_key, query_id, own_positive, unnest(passage_ids) AS passage_id,
           generate_subscripts(passage_ids, 1) AS slot
    FROM ex
),
texts AS (
    SELECT s.record_key,
           list({'slot': s.slot,
                 'text': coalesce(CASE WHEN s.slot = 1 AND s.own_positive THEN q.positive_text END, p.text)}) AS items
    FROM slots s
    JOIN passages p USING (passage_id)
    JOIN queries q USING (query_id)
    GROUP BY s.record_key
)
SELECT ex.record_key AS query_id, ex.query, list_transform(list_sort(t.items), lambda x: x.text) AS docs, ex.scores,
       CASE WHEN getvariable('export_first_rank')
            THEN CASE WHEN ex.own_positive THEN fr.positive_rank ELSE ex.judged_first_rank END END AS first_rank
FROM ex
JOIN texts t USING (record_key)
LEFT JOIN (
    SELECT c.query_id, c.positive_rank FROM candidates c
    WHERE getvariable('export_first_rank') AND c.role = 'positive'
      AND c.query_id >= getvariable('records_from')
      AND (getvariable('records_to') IS NULL OR c.query_id < getvariable('records_to'))
) fr USING (query_id)
ORDER BY ex.record_key

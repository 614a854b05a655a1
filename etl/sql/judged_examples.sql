-- Layer judged_examples: with judge.keep_as_positive, one row per negative the LLM judge called
-- relevant (layer judged_negatives, verdict 'relevant'), and for each an extra training record with
-- that passage as its positive. Empty when the option (or the judge) is off.
--
-- Why an extra record and not a second positive: a record holds exactly one positive (docs[1], the
-- trainer's kd format and the examples contract), and the KL loss reads a record's scores as one
-- distribution over its docs. So a judged-relevant passage becomes the positive of a record of its
-- own: the same query, the passage first, then the negatives of the query's record in examples
-- (which already leave out every judged-relevant passage of the query, filter judged_relevant),
-- with the same roles. The export appends these records after their query's record
-- (sql/export_records.sql), in the same split file.
--
-- Scores: the same teacher's scores (scored_candidates.teacher_score of the very rows examples
-- picked), min-max normalized within the record times scoring.scale and rounded to
-- scoring.decimals, as examples.sql does; doc order as there (positive first, then score
-- descending; ties: role, passage_id). A record's positive must score highest, so a judged passage
-- that does not score strictly above every negative of the query's record (after rounding: the
-- validator checks the exported scores) gets no record.
--
-- skip_reason (NULL = a record is exported):
--   no_main_record            the query has no record in examples (it was dropped), so no negatives
--   not_above_every_negative  a negative of the query's record scores at least as high as the passage
-- Skipped rows carry only record_id, query_id, passage_id and skip_reason.
--
-- first_rank (exported with export.first_rank): 1 + the query's retrieved neighbours (layer
-- neighbours, at most mining.search_depth) more similar to the query than the passage, not counting
-- passages of its own document, of the query's positive document, or other judged-relevant passages
-- of the query; the passage's analogue of candidates.positive_rank.
--
-- record_id = query_id || '/judged/' || passage_id. Query ids have a fixed shape
-- (<method>:<16 hex digits>, sql/queries.sql), so no query_id is a prefix of another and the
-- record_id sorts right after its query's query_id and before the next one: ordering records by
-- that key puts each extra record just after its query's record, deterministically.
--
-- @unique: record_id
-- @not_null: record_id, query_id, passage_id
-- @check: skip_reason IS NOT NULL OR (passage_ids[1] = passage_id AND roles[1] = 'positive' AND split IS NOT NULL)
-- @check: skip_reason IS NOT NULL OR (len(passage_ids) = len(scores) AND len(passage_ids) = len(roles))
-- @check: skip_reason IS NOT NULL OR len(passage_ids) = 1 + getvariable('n_hard') + getvariable('n_related') + getvariable('n_easy')
-- @check: skip_reason IS NOT NULL OR list_count(list_filter(roles, lambda r: r = 'positive')) = 1
-- @check: skip_reason IS NOT NULL OR (scores[1] = getvariable('score_scale') AND list_max(scores[2:]) < scores[1] AND list_min(scores) >= 0)
WITH rel AS (  -- the judged-relevant pairs (only with judge.keep_as_positive)
    SELECT query_id, passage_id FROM judged_negatives
    WHERE verdict = 'relevant' AND getvariable('judge_keep_as_positive')
),
main AS (  -- the query's record in examples
    SELECT e.* FROM examples e WHERE e.query_id IN (SELECT query_id FROM rel)
),
cand AS (  -- the teacher's and the e5 score of each candidate of the judged queries
    SELECT query_id, passage_id, role, max(teacher_score) AS teacher_score, max(bi_score) AS bi_score
    FROM scored_candidates
    WHERE query_id IN (SELECT query_id FROM rel)
    GROUP BY ALL
),
items AS (  -- per extra record: the judged passage as positive, then the record's negatives
    SELECT r.query_id, r.passage_id AS judged_id, r.passage_id, 'positive' AS role,
           max(c.teacher_score) AS teacher_score, max(c.bi_score) AS bi_score
    FROM rel r JOIN main m USING (query_id) JOIN cand c USING (query_id, passage_id)
    WHERE c.role <> 'positive'
    GROUP BY ALL
    UNION ALL
    SELECT n.query_id, n.judged_id, n.passage_id, n.role, c.teacher_score, c.bi_score
    FROM (SELECT r.query_id, r.passage_id AS judged_id,
                 unnest(m.passage_ids[2:]) AS passage_id, unnest(m.roles[2:]) AS role
          FROM rel r JOIN main m USING (query_id)) n
    JOIN cand c USING (query_id, passage_id, role)
),
scored AS (  -- record-level min-max score, as examples.sql
    SELECT i.*,
           round(getvariable('score_scale') * (i.teacher_score - min(i.teacher_score) OVER w)
                 / nullif(max(i.teacher_score) OVER w - min(i.teacher_score) OVER w, 0),
                 getvariable('score_decimals')) AS score,
           max(i.teacher_score) FILTER (WHERE i.role <> 'positive') OVER w AS best_negative,
           CASE i.role WHEN 'positive' THEN 0 WHEN 'hard' THEN 1 WHEN 'related' THEN 2 ELSE 3 END AS role_order
    FROM items i
    WINDOW w AS (PARTITION BY i.query_id, i.judged_id)
),
slotted AS (  -- slot 1 = the positive, then by score descending (ties: role, passage_id)
    SELECT *, row_number() OVER (PARTITION BY query_id, judged_id
                                 ORDER BY role_order = 0 DESC, score DESC, role_order, passage_id) AS slot,
           max(score) FILTER (WHERE role <> 'positive') OVER (PARTITION BY query_id, judged_id) AS best_negative_score
    FROM scored
),
records AS (
    SELECT query_id, judged_id AS passage_id,
           -- strictly above every negative, by the teacher's score and by the rounded exported score
           bool_or(role = 'positive' AND teacher_score > best_negative AND score > best_negative_score) AS above,
           list_sort(list({'slot': slot, 'score': score, 'role': role, 'passage_id': passage_id,
                           'teacher_score': round(teacher_score, 6), 'bi_score': round(bi_score, 6)})) AS items,
           any_value(bi_score) FILTER (WHERE role = 'positive') AS pos_bi_score
    FROM slotted
    GROUP BY query_id, judged_id
),
ranked AS (  -- first_rank: 1 + neighbours of other documents more similar to the query than the passage
    SELECT r.query_id, r.passage_id, 1 + count(n.passage_id) AS first_rank
    FROM records r
    JOIN main m USING (query_id)
    JOIN passages jp ON jp.passage_id = r.passage_id
    LEFT JOIN (SELECT n.query_id, n.passage_id, n.similarity, p.doc_id  -- other judged-relevant ones left out
               FROM neighbours n JOIN passages p USING (passage_id)
               ANTI JOIN rel x ON x.query_id = n.query_id AND x.passage_id = n.passage_id
               WHERE n.query_id IN (SELECT query_id FROM rel)) n
           ON n.query_id = r.query_id AND n.similarity > r.pos_bi_score
          AND n.doc_id <> jp.doc_id AND n.doc_id <> m.doc_id
    GROUP BY r.query_id, r.passage_id
),
outcome AS (
    SELECT r.query_id, r.passage_id,
           CASE WHEN m.query_id IS NULL THEN 'no_main_record'
                WHEN NOT coalesce(rec.above, false) THEN 'not_above_every_negative' END AS skip_reason
    FROM rel r
    LEFT JOIN main m USING (query_id)
    LEFT JOIN records rec USING (query_id, passage_id)
)
SELECT o.query_id || '/judged/' || o.passage_id AS record_id, o.query_id, o.passage_id, o.skip_reason,
       m.query, m.method, m.source, m.doc_id, m.split,
       list_transform(rec.items, lambda x: x.score) AS scores,
       list_transform(rec.items, lambda x: x.role) AS roles,
       list_transform(rec.items, lambda x: x.passage_id) AS passage_ids,
       list_transform(rec.items, lambda x: x.teacher_score) AS teacher_scores,
       list_transform(rec.items, lambda x: x.bi_score) AS bi_scores,
       k.first_rank
FROM outcome o
LEFT JOIN main m ON m.query_id = o.query_id AND o.skip_reason IS NULL
LEFT JOIN records rec ON rec.query_id = o.query_id AND rec.passage_id = o.passage_id AND o.skip_reason IS NULL
LEFT JOIN ranked k ON k.query_id = o.query_id AND k.passage_id = o.passage_id AND o.skip_reason IS NULL
ORDER BY record_id

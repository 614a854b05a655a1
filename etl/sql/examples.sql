-- Layer examples: one training record per query: 1 positive + negatives.hard hard negatives
-- + negatives.related related + negatives.easy easy negatives, or no record at all (a query that
-- cannot fill every slot is dropped, never padded; sql/stats/dropped_queries.sql says why).
--
-- Picks (from scored_candidates, usable rows): hard = the best-scored usable neighbours within the
-- rank window (ranks up to mining.top_k), deeper ranks only when the window cannot fill the slots;
-- with negatives.sampling = "spread", hard = negatives.hard usable window neighbours evenly spaced in
-- teacher-score order instead (the hardest, the least hard, and evenly between: stratified by score rank);
-- related = the best-scored usable same-cluster draws, easy = the first usable random draws (draw
-- order), both taken below every picked hard negative first and from the other usable draws only
-- when too few score below (never a passage already picked). So positive > every negative by teacher
-- score, and hard > related/easy wherever the draws allow it (a draw scoring above a hard pick is a
-- harder negative than planned, not a false one: it passed the same margin filters).
-- Scores: teacher score min-max normalized within the record, times scoring.scale: the
-- positive gets `scale`, the least similar doc 0 (the OpenSearch sample's own teacher does the
-- same, giving a per-query spread of 0-30). Only the spread within a record matters to the KL loss.
-- Order: positive first, then by score descending (see README "Doc order").
-- Split: by md5 of the positive document's normalized title, so all queries of a document, and
-- of same-titled documents in other sources, fall in the same split.
-- Audit columns (not exported): teacher_scores (the teacher's raw score) and bi_scores (the e5
-- cosine), in slot order like scores.
-- No texts here (a record's docs are its passage_ids): the export joins them per batch of
-- records (sql/export_records.sql), so no step holds every record's texts at once.
--
-- @unique: query_id
-- @not_null: query_id, query, passage_ids, scores, roles, split
-- @check: len(passage_ids) = len(scores) AND len(passage_ids) = len(roles)
-- @check: len(passage_ids) = 1 + getvariable('n_hard') + getvariable('n_related') + getvariable('n_easy')
-- @check: roles[1] = 'positive' AND list_count(list_filter(roles, lambda r: r = 'positive')) = 1
-- @check: list_min(scores) >= 0 AND list_max(scores) <= getvariable('score_scale')
WITH ok AS NOT MATERIALIZED (  -- re-read per use (a filtered scan) rather than holding every usable candidate
    SELECT * FROM scored_candidates
    -- filter 'judged_relevant': a negative the LLM judge says answers the query (etl/judge.py)
    ANTI JOIN (SELECT query_id, passage_id FROM judged_negatives WHERE verdict = 'relevant') USING (query_id, passage_id)
    WHERE filter_reason IS NULL
      -- the runner writes this layer one query_id range at a time (duckdb.batch_queries queries);
      -- unset (NULL) bounds = every query
      AND (getvariable('batch_from') IS NULL OR query_id >= getvariable('batch_from'))
      AND (getvariable('batch_to') IS NULL OR query_id < getvariable('batch_to'))
),
pos AS (SELECT * FROM ok WHERE role = 'positive'),
hard_ranked AS (  -- usable hard candidates in picking order (rank window first, then best score)
    SELECT *, row_number() OVER (PARTITION BY query_id
                                 ORDER BY rank > getvariable('top_k'), teacher_score DESC, passage_id) AS pick_no,
           count(*) FILTER (WHERE rank <= getvariable('top_k')) OVER (PARTITION BY query_id) AS n_window
    FROM ok WHERE role = 'hard'
),
hard_pick AS (  -- negatives.sampling: top = the first n_hard; spread = n_hard evenly spaced in score order
    -- over the usable window candidates (the hardest, the least hard and evenly between), when the
    -- window holds more than n_hard (else as top)
    SELECT * EXCLUDE (pick_no, n_window) FROM hard_ranked
    WHERE CASE WHEN getvariable('negative_sampling') = 'spread' AND n_window > getvariable('n_hard')
               THEN list_contains(list_transform(range(getvariable('n_hard')), lambda i:
                        1 + round(i * (n_window - 1) / (getvariable('n_hard') - 1))::BIGINT), pick_no)
               ELSE pick_no <= getvariable('n_hard') END
),
hard_stats AS (
    SELECT query_id, count(*) AS n_hard, min(teacher_score) AS min_hard, count_if(rank > getvariable('top_k')) AS n_deep
    FROM hard_pick GROUP BY query_id
),
related_pick AS (  -- below every hard pick first; then any other usable draw, so a query is never lost to
    -- draws that score high (a random draw above a hard pick is a harder negative, not a wrong one)
    SELECT ok.* FROM ok JOIN hard_stats h USING (query_id)
    WHERE ok.role = 'related' AND ok.passage_id NOT IN (SELECT passage_id FROM hard_pick x WHERE x.query_id = ok.query_id)
    QUALIFY row_number() OVER (PARTITION BY query_id
                               ORDER BY ok.teacher_score >= h.min_hard, teacher_score DESC, passage_id) <= getvariable('n_related')
),
easy_pick AS (  -- the first usable random draws below every hard pick, then (only if too few) the other usable draws
    SELECT ok.* FROM ok JOIN hard_stats h USING (query_id)
    WHERE ok.role = 'easy'
      AND ok.passage_id NOT IN (SELECT passage_id FROM hard_pick x WHERE x.query_id = ok.query_id)
      AND ok.passage_id NOT IN (SELECT passage_id FROM related_pick x WHERE x.query_id = ok.query_id)
    QUALIFY row_number() OVER (PARTITION BY query_id ORDER BY ok.teacher_score >= h.min_hard, rank) <= getvariable('n_easy')
),
picked AS (
    SELECT * FROM pos
    UNION ALL SELECT * FROM hard_pick
    UNION ALL SELECT * FROM related_pick
    UNION ALL SELECT * FROM easy_pick
),
complete AS (
    SELECT query_id FROM picked GROUP BY query_id
    HAVING count_if(role = 'positive') = 1
       AND count_if(role = 'hard') = getvariable('n_hard')
       AND count_if(role = 'related') = getvariable('n_related')
       AND count_if(role = 'easy') = getvariable('n_easy')
),
scored AS (  -- narrow rows (no text): record-level min-max score and the doc's slot in the record
    SELECT p.query_id, p.passage_id, p.role, p.teacher_score, p.bi_score,
           round(getvariable('score_scale') * (p.teacher_score - min(p.teacher_score) OVER w)
                 / nullif(max(p.teacher_score) OVER w - min(p.teacher_score) OVER w, 0),
                 getvariable('score_decimals')) AS score,
           CASE p.role WHEN 'positive' THEN 0 WHEN 'hard' THEN 1 WHEN 'related' THEN 2 ELSE 3 END AS role_order
    FROM picked p
    JOIN complete USING (query_id)
    WINDOW w AS (PARTITION BY p.query_id)
),
slotted AS (  -- slot 1 = the positive, then by score descending (ties: role, passage_id)
    SELECT *, row_number() OVER (PARTITION BY query_id
                                 ORDER BY role_order = 0 DESC, score DESC, role_order, passage_id) AS slot
    FROM scored
),
slots AS (  -- one narrow list per record, put in slot order by list_sort (structs sort by their
    -- first field, the unique slot); texts are joined at export, per batch (sql/export_records.sql)
    SELECT query_id,
           list_sort(list({'slot': slot, 'score': score, 'role': role, 'passage_id': passage_id,
                           'teacher_score': round(teacher_score, 6), 'bi_score': round(bi_score, 6)})) AS items
    FROM slotted
    GROUP BY query_id
)
SELECT s.query_id, q.query, q.method, q.source, q.doc_id,
       CASE WHEN (md5_number(lower(d.title)) % 1000000) < getvariable('val_fraction') * 1000000
            THEN 'val' ELSE 'train' END AS split,
       list_transform(s.items, lambda x: x.score) AS scores,
       list_transform(s.items, lambda x: x.role) AS roles,
       list_transform(s.items, lambda x: x.passage_id) AS passage_ids,
       list_transform(s.items, lambda x: x.teacher_score) AS teacher_scores,
       list_transform(s.items, lambda x: x.bi_score) AS bi_scores,
       h.n_deep AS deep_hard_negatives
FROM slots s
JOIN hard_stats h USING (query_id)
JOIN queries q USING (query_id)
JOIN documents d ON d.doc_id = q.doc_id
ORDER BY s.query_id

-- Queries that produced no training record, by the first slot they could not fill
-- (etl/cli.py DROP_HINTS says what each means and which setting would keep such queries).
-- Columns: reason, n.
WITH usable AS (
    SELECT query_id, role, count(*) AS n FROM scored_candidates
    ANTI JOIN (SELECT query_id, passage_id FROM judged_negatives WHERE verdict = 'relevant') USING (query_id, passage_id)
    WHERE filter_reason IS NULL GROUP BY ALL
),
flagged AS (
    SELECT query_id, filter_reason FROM candidates WHERE role = 'positive' AND filter_reason IS NOT NULL
),
per_query AS (
    SELECT q.query_id, any_value(f.filter_reason) AS pos_flag,
           coalesce(max(n) FILTER (WHERE role = 'positive'), 0) AS pos,
           coalesce(max(n) FILTER (WHERE role = 'hard'), 0) AS hard,
           coalesce(max(n) FILTER (WHERE role = 'related'), 0) AS related,
           coalesce(max(n) FILTER (WHERE role = 'easy'), 0) AS easy
    FROM queries q LEFT JOIN usable u USING (query_id) LEFT JOIN flagged f USING (query_id)
    GROUP BY q.query_id
)
SELECT CASE
           WHEN pos_flag IS NOT NULL THEN pos_flag
           WHEN pos = 0 THEN 'no_positive'
           WHEN hard < getvariable('n_hard') THEN 'not_enough_hard_negatives'
           WHEN related < getvariable('n_related') THEN 'not_enough_related_negatives'
           WHEN easy < getvariable('n_easy') THEN 'not_enough_easy_negatives'
           ELSE 'draws_are_hard_picks'  -- the usable draws are all among the hard picks
       END AS reason,
       count(*) AS n
FROM per_query
WHERE query_id NOT IN (SELECT query_id FROM examples)
GROUP BY 1
ORDER BY 1

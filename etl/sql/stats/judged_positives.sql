-- Judged-relevant negatives and what became of them with judge.keep_as_positive (layer
-- judged_examples): 'exported' (an extra record with the passage as its positive) or the reason
-- it got none (no_main_record, not_above_every_negative).
-- Columns: outcome, n.
SELECT coalesce(skip_reason, 'exported') AS outcome, count(*) AS n
FROM judged_examples
GROUP BY 1
ORDER BY 1

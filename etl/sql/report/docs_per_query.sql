-- Docs per training record, with the role make-up, by split. Every record should have
-- 1 + negatives.hard + negatives.related + negatives.easy docs (an even number: the trainer pairs
-- docs by a stride and silently drops leftovers). Columns: split, docs, hard, related, easy, records.
SELECT split, len(passage_ids) AS docs,
       list_count(list_filter(roles, lambda r: r = 'hard')) AS hard,
       list_count(list_filter(roles, lambda r: r = 'related')) AS related,
       list_count(list_filter(roles, lambda r: r = 'easy')) AS easy,
       count(*) AS records
FROM examples
GROUP BY ALL
ORDER BY split, docs, hard, related, easy

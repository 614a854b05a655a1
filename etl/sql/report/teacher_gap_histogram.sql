-- Histogram of the teacher-score gap positive - negative (see teacher_gap.sql), by negative role:
-- 40 equal bins between the smallest and the largest gap.
-- Columns: role, bin (0-39), bin_lo, bin_hi, n.
WITH flat AS (
    SELECT query_id, unnest(roles) AS role, unnest(teacher_scores) AS ts FROM examples
),
pos AS (SELECT query_id, ts AS pos_ts FROM flat WHERE role = 'positive'),
gaps AS (
    SELECT f.role, p.pos_ts - f.ts AS gap
    FROM flat f JOIN pos p USING (query_id)
    WHERE f.role <> 'positive'
),
rng AS (SELECT min(gap) AS lo, greatest(max(gap) - min(gap), 1e-9) / 40 AS width FROM gaps),
binned AS (
    SELECT g.role, least(floor((g.gap - r.lo) / r.width), 39)::INTEGER AS bin, r.lo, r.width
    FROM gaps g, rng r
)
SELECT role, bin, round(lo + bin * width, 6) AS bin_lo, round(lo + (bin + 1) * width, 6) AS bin_hi,
       count(*) AS n
FROM binned
GROUP BY ALL
ORDER BY role, bin

-- Histogram of exported scores by role: 20 equal bins over [0, scoring.scale].
-- Columns: role, bin (0-19), bin_lo, bin_hi, n.
WITH p AS (SELECT coalesce(getvariable('score_scale'), 30.0)::DOUBLE AS scale, 20 AS bins),
flat AS (SELECT unnest(roles) AS role, unnest(scores) AS score FROM examples)
SELECT f.role,
       least(floor(f.score / p.scale * p.bins), p.bins - 1)::INTEGER AS bin,
       round(least(floor(f.score / p.scale * p.bins), p.bins - 1) * p.scale / p.bins, 4) AS bin_lo,
       round((least(floor(f.score / p.scale * p.bins), p.bins - 1) + 1) * p.scale / p.bins, 4) AS bin_hi,
       count(*) AS n
FROM flat f, p
GROUP BY ALL
ORDER BY f.role, bin

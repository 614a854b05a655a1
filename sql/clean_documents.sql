-- Layer clean_documents: every loaded record, normalized, markup stripped, with a drop_reason.
-- Reads raw_documents (good rows only; rejected rows go to the quarantine layer).
-- documents.sql keeps the rows with drop_reason IS NULL; quarantine.sql reports the others.
--
-- Markup handled: NamuMark ([[link|label]], '''bold''', ''italic'', __u__, ~~s~~, --s--, ^^sup^^,
-- ,,sub,,, {{{#!wiki ...}}} / {{{+1 ...}}} / {{{#color ...}}} / {{{#!syntax ...}}} wrappers (inner
-- text kept), [include(...)] and other [macro(...)] / [macro], footnotes [* ...] (removed),
-- [[파일:...]] / [[분류:...]] (removed), tables ||a||b|| with <cell attributes>, == headings ==
-- (become paragraph breaks), ## comments, > quotes, * / 1. list markers, ---- rules) and
-- MediaWiki-style text (= = Section = = headings, {{templates}}, <ref>..</ref>, <tags>).
--
-- @unique: doc_id
-- @not_null: doc_id, source, title, text
-- @check: drop_reason IS NOT NULL OR length(text) BETWEEN getvariable('clean_min_chars') AND getvariable('clean_max_chars')
WITH raw AS (
    SELECT
        source, file, line_no, orig_id, url, language, namespace,
        trim(regexp_replace(nfc_normalize(title), '\s+', ' ', 'g')) AS title,
        nfc_normalize(replace(replace(text, chr(13) || chr(10), chr(10)), chr(13), chr(10))) AS raw_text,
        regexp_matches(left(text, 200), '^\s*#(?i:redirect|넘겨주기)\s') AS is_redirect
    FROM raw_documents
    WHERE reject_reason IS NULL
),
ids AS (
    -- doc_id = <source>:<original id>; records without an id use their title; a repeated id
    -- within a source gets a ~N suffix (first occurrence, by file and line, keeps the bare id;
    -- a '~' inside an original id is written '~~').
    SELECT *,
        -- '~' is doubled in ids so a suffix ~N can never collide with an original id
        replace(coalesce(orig_id, title), '~', '~~') AS base_id,
        row_number() OVER (PARTITION BY source, coalesce(orig_id, title) ORDER BY file, line_no) AS id_rank
    FROM raw
),
-- one markup rule per step, applied in order ------------------------------------------------
s1 AS (  -- "## comment" lines, horizontal rules, [목차]/[tableofcontents]
    SELECT * REPLACE (regexp_replace(raw_text, '(?m)^(##[^\n]*|-{4,}\s*)$', '', 'g') AS raw_text) FROM ids
),
s2 AS (  -- {{{#!html ...}}}, {{{#!syntax lang ...}}} keep inner text; drop the opener tokens
    SELECT * REPLACE (regexp_replace(raw_text,
        '\{\{\{#!(wiki|folding|html|syntax|style)[^\n]*|\{\{\{[+-][1-5]\s?|\{\{\{#[0-9A-Za-z,#]+\s', '', 'g') AS raw_text) FROM s1
),
s3 AS (  -- remaining {{{ }}} braces, MediaWiki {{templates}} and <ref>...</ref>
    SELECT * REPLACE (regexp_replace(regexp_replace(regexp_replace(raw_text,
        '<ref[^>]*/>|<ref[^>]*>.*?</ref>', '', 'gs'),
        '\{\{[^{}]*\}\}', '', 'g'),
        '\{\{\{|\}\}\}', '', 'g') AS raw_text) FROM s2
),
s4 AS (  -- footnotes [* ...] / [*A ...], which may contain [[links]]: removed with their text
    SELECT * REPLACE (regexp_replace(raw_text,
        '\[\*[^\[\]]*(?:\[\[[^\]]*\]\][^\[\]]*)*\]', '', 'g') AS raw_text) FROM s3
),
s5 AS (  -- file / category / image links removed entirely
    SELECT * REPLACE (regexp_replace(raw_text,
        '\[\[\s*(파일|분류|File|Category|이미지|Image)\s*:[^\]]*\]\]', '', 'g') AS raw_text) FROM s4
),
s6 AS (  -- [[target|label]] -> label, [[target]] -> target
    SELECT * REPLACE (regexp_replace(raw_text,
        '\[\[(?:[^\]|]*\|)?((?:[^\[\]|]|\[[^\[\]]*\])*)\]\]', '\1', 'g') AS raw_text) FROM s5
),
s7 AS (  -- [br] -> newline; other macros (after links, so [[x]] is not taken for [x]) [include(...)], [age(...)], [목차], [date] -> removed
    SELECT * REPLACE (regexp_replace(regexp_replace(raw_text,
        '\[(br|BR)\]', chr(10), 'g'),
        '\[[A-Za-z가-힣_]+(\((?:[^()\]]|\([^()]*\))*\))?\]', '', 'g') AS raw_text) FROM s6
),
s8 AS (  -- headings (NamuMark "== x ==", MediaWiki " = = x = = ") become paragraph breaks
    SELECT * REPLACE (regexp_replace(raw_text,
        '(?m)^[ \t]*=(?:[ \t]*=)*[ \t]*#?[^=\n]+?#?[ \t]*=(?:[ \t]*=)*[ \t]*$', chr(10), 'g') AS raw_text) FROM s7
),
s9 AS (  -- tables: cell attributes <...> and html tags removed, || cell separators -> space
    SELECT * REPLACE (regexp_replace(regexp_replace(raw_text,
        '<[^<>\n]{0,120}>', '', 'g'),
        '\|\|', ' ', 'g') AS raw_text) FROM s8
),
s10 AS (  -- strikethrough content removed; bold/italic/underline/sup/sub markers removed
    SELECT * REPLACE (regexp_replace(regexp_replace(regexp_replace(regexp_replace(raw_text,
        '~~[^~\n]*~~', '', 'g'),
        '(^|[^-])--[^-\s][^\n]*?--', '\1', 'g'),
        '''''''|''''|__|\^\^|,,', '', 'g'),
        '(?m)^[ \t]*(>+[ \t]*|\*+[ \t]+|[0-9]+\.[ \t]+)', '', 'g') AS raw_text) FROM s9
),
s11 AS (  -- whitespace: spaces collapsed, blank-line runs -> one paragraph break, spaces/newlines trimmed
    SELECT * REPLACE (trim(regexp_replace(regexp_replace(regexp_replace(raw_text,
        '[ \t\x0B\f\x{00A0}\x{3000}]+', ' ', 'g'),
        ' ?\n ?', chr(10), 'g'),
        '\n{3,}', chr(10) || chr(10), 'g'), ' ' || chr(10)) AS raw_text) FROM s10
),
flagged AS (
    SELECT
        source || ':' || base_id || CASE WHEN id_rank > 1 THEN '~' || id_rank ELSE '' END AS doc_id,
        source, orig_id,
        coalesce(url, coalesce(getvariable('source_url_prefix')[source], '') || url_encode(replace(title, ' ', '_'))) AS url,
        title, language, namespace, raw_text AS text, length(raw_text) AS n_chars, file, line_no,
        md5(raw_text) AS text_md5,
        CASE
            WHEN NOT list_contains(getvariable('clean_namespaces'), namespace) THEN 'namespace'
            WHEN getvariable('clean_drop_redirects')
                 AND is_redirect THEN 'redirect'
            WHEN length(raw_text) = 0 THEN 'empty_text'
            WHEN length(raw_text) < getvariable('clean_min_chars') THEN 'too_short'
            WHEN length(raw_text) > getvariable('clean_max_chars') THEN 'too_long'
        END AS filter_reason
    FROM s11
)
SELECT
    doc_id, source, orig_id, url, title, language, namespace, text, n_chars, file, line_no,
    CASE  -- exact duplicate texts: the first by (source, file, line) is kept
        WHEN filter_reason IS NOT NULL THEN filter_reason
        WHEN getvariable('clean_dedupe') AND row_number() OVER (
                PARTITION BY text_md5, filter_reason IS NULL ORDER BY source, file, line_no) > 1
            THEN 'duplicate_text'
    END AS drop_reason
FROM flagged
ORDER BY doc_id

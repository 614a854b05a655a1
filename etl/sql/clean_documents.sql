-- Layer clean_documents: every loaded record, normalized, markup stripped, with a drop_reason.
-- Reads raw_documents (good rows only; rejected rows go to the quarantine layer).
-- documents.sql keeps the rows with drop_reason IS NULL; quarantine.sql reports the others.
--
-- Markup handled: NamuMark ([[link|label]], '''bold''', ''italic'', __u__, ~~s~~, --s--, ^^sup^^,
-- ,,sub,,, {{{#!wiki ...}}} / {{{#!folding ...}}} / {{{+1 ...}}} / {{{#color ...}}} wrappers (inner text kept and read
-- as markup), {{{#!html ...}}} (tags stripped, text kept), literals {{{...}}} and {{{#!syntax lang ...}}} code (their
-- text kept verbatim, line breaks included: markup inside a literal is not interpreted), [include(...)] and other
-- [macro(...)] / [macro], footnotes [* ...] (removed), [[파일:...]] / [[분류:...]] (removed), tables ||a||b|| with
-- <cell attributes> (each row a line, cells joined by ' | ', a paragraph break after the table), == headings ==
-- (become paragraph breaks), ## comments, > quotes (a paragraph break after the block), * / 1. list markers, ----
-- rules) and MediaWiki-style text (= = Section = = headings, {{templates}}, <ref>..</ref>, <tags>).
-- Code blocks are kept rather than dropped: they are text a search can ask for, and first_sentence (queries.sql)
-- skips them by paragraph structure. Noncharacters U+FDD0..U+FDEF are removed from the input (used internally).
--
-- title_derived: the record had no title and ingest derived one (etl/ingest.py: the url's last path
-- segment url-decoded, else the id, else the text's first line cut to 80 characters); passed through.
--
-- @unique: doc_id
-- @not_null: doc_id, source, title, text, title_derived
-- @check: drop_reason IS NOT NULL OR n_chars BETWEEN getvariable('clean_min_chars') AND getvariable('clean_max_chars')
WITH raw AS (
    SELECT
        source, file, line_no, orig_id, url, language, namespace, title_derived,
        trim(regexp_replace(nfc_normalize(title), '\s+', ' ', 'g')) AS title,
        -- NFC only where a character outside NFC-stable ranges occurs (ASCII..U+02FF, punctuation,
        -- CJK symbols, CJK ideographs, precomposed Hangul): nfc_normalize costs ~4x this check
        -- (line ends: CR LF and CR -> LF, rewritten only where a CR occurs)
        CASE WHEN regexp_matches(text, '[^\x00-\x{02FF}\x{2010}-\x{2027}\x{2030}-\x{205E}\x{3000}-\x{3029}\x{3030}-\x{303F}\x{4E00}-\x{9FFF}\x{AC00}-\x{D7A3}]')
             -- (noncharacters U+FDD0..U+FDEF, which fall in this branch, are removed: s1 uses them internally)
             THEN nfc_normalize(replace(replace(CASE WHEN regexp_matches(text, '[\x{FDD0}-\x{FDEF}]')
                  THEN regexp_replace(text, '[\x{FDD0}-\x{FDEF}]', '', 'g') ELSE text END, chr(13) || chr(10), chr(10)), chr(13), chr(10)))
             WHEN contains(text, chr(13)) THEN replace(replace(text, chr(13) || chr(10), chr(10)), chr(13), chr(10))
             ELSE text END AS raw_text,
        regexp_matches(left(text, 200), '^\s*#(?i:redirect|넘겨주기)\s') AS is_redirect
    FROM raw_documents
    WHERE reject_reason IS NULL
),
keys AS (
    -- doc_id = <source>:<original id>; records without an id use their title; a repeated id
    -- within a source gets a ~N suffix (first occurrence, by file and line, keeps the bare id).
    -- Computed on a narrow projection (no text), so the window sorts keys, not documents.
    SELECT source, file, line_no, base_id,
        row_number() OVER (PARTITION BY source, base_id ORDER BY file, line_no) AS id_rank
    FROM (SELECT source, file, line_no,
                 -- '~' is doubled in ids so a suffix ~N can never collide with an original id
                 replace(coalesce(orig_id, trim(regexp_replace(nfc_normalize(title), '\s+', ' ', 'g'))), '~', '~~') AS base_id
          FROM raw_documents WHERE reject_reason IS NULL)
),
ids AS (
    SELECT raw.*, keys.base_id, keys.id_rank FROM raw JOIN keys USING (source, file, line_no)
),
-- one markup rule per step, applied in order ------------------------------------------------
s1 AS (  -- NamuMark {{{...}}} (each step only on texts that contain '{{{'):
    -- * wrappers whose text is kept and read as markup: {{{#!wiki ...}}} / {{{#!folding ...}}} / {{{#!style ...}}} (the
    --   opener line dropped), {{{+1 ...}}} / {{{-1 ...}}} sizes, {{{#red ...}}} / {{{#fff,#000 ...}}} colours (CSS colour
    --   names or hex), {{{#!html ...}}} (the opener token dropped, the tags go in s9): the opener goes here, '}}}' in s3;
    -- * literals, kept verbatim and not read as markup: {{{#!syntax lang ...}}} code (the text between the opener line
    --   and a line break before '}}}') and every other {{{...}}} ({{{std::string}}}, {{{[[not a link]]}}}, {{{#conda install <x>}}}). Each is
    --   cut out between the sentinels U+FDD0 / U+FDD1 and its markup characters are swapped (translate) for the
    --   noncharacters U+FDD2..U+FDE2, which no later rule matches; s12 swaps them back. (raw removes noncharacters from
    --   the input, so none is mistaken for one of these.)
    SELECT * EXCLUDE (s2a, s2b) REPLACE (CASE WHEN lit THEN array_to_string(list_transform(string_split(s2b, chr(64976)),
            lambda p: CASE WHEN contains(p, chr(64977))
                      THEN translate(split_part(p, chr(64977), 1), '[]{}<>|''_^,~-=#*.', chr(64978)||chr(64979)||chr(64980)||chr(64981)||chr(64982)||chr(64983)||chr(64984)||chr(64985)||chr(64986)||chr(64987)||chr(64988)||chr(64989)||chr(64990)||chr(64991)||chr(64992)||chr(64993)||chr(64994))
                           || split_part(p, chr(64977), 2)
                      ELSE p END), '') ELSE s2b END AS raw_text)
    FROM (SELECT *, CASE WHEN lit THEN regexp_replace(s2a,
        '(?s)\{\{\{#!syntax(?:[ \t]+[^ \t\n]*)?[ \t]*\n?(.*?)\n?\}\}\}|\{\{\{(.*?)\n?\}\}\}', chr(64976) || '\1\2' || chr(64977), 'g')
        ELSE s2a END AS s2b
    FROM (SELECT *, CASE WHEN lit THEN regexp_replace(raw_text,
        '\{\{\{#!(?:wiki|folding|style)[^\n]*|\{\{\{#!html|\{\{\{[+-][1-5]\s?|\{\{\{(?:#(?:[0-9A-Fa-f]{8}|[0-9A-Fa-f]{6}|[0-9A-Fa-f]{3,4}|(?i:aliceblue|antiquewhite|aqua|aquamarine|azure|beige|bisque|black|blanchedalmond|blue|blueviolet|brown|burlywood|cadetblue|chartreuse|chocolate|coral|cornflowerblue|cornsilk|crimson|cyan|darkblue|darkcyan|darkgoldenrod|darkgray|darkgreen|darkgrey|darkkhaki|darkmagenta|darkolivegreen|darkorange|darkorchid|darkred|darksalmon|darkseagreen|darkslateblue|darkslategray|darkslategrey|darkturquoise|darkviolet|deeppink|deepskyblue|dimgray|dimgrey|dodgerblue|firebrick|floralwhite|forestgreen|fuchsia|gainsboro|ghostwhite|gold|goldenrod|gray|green|greenyellow|grey|honeydew|hotpink|indianred|indigo|ivory|khaki|lavender|lavenderblush|lawngreen|lemonchiffon|lightblue|lightcoral|lightcyan|lightgoldenrodyellow|lightgray|lightgreen|lightgrey|lightpink|lightsalmon|lightseagreen|lightskyblue|lightslategray|lightslategrey|lightsteelblue|lightyellow|lime|limegreen|linen|magenta|maroon|mediumaquamarine|mediumblue|mediumorchid|mediumpurple|mediumseagreen|mediumslateblue|mediumspringgreen|mediumturquoise|mediumvioletred|midnightblue|mintcream|mistyrose|moccasin|navajowhite|navy|oldlace|olive|olivedrab|orange|orangered|orchid|palegoldenrod|palegreen|paleturquoise|palevioletred|papayawhip|peru|pink|plum|powderblue|purple|rebeccapurple|red|rosybrown|royalblue|saddlebrown|salmon|sandybrown|seagreen|seashell|sienna|silver|skyblue|slateblue|slategray|slategrey|snow|springgreen|steelblue|tan|teal|thistle|tomato|transparent|turquoise|violet|wheat|white|whitesmoke|yellow|yellowgreen)),?)+\s', '', 'g')
        ELSE raw_text END AS s2a
    FROM (SELECT *, contains(raw_text, '{{{') AS lit FROM ids)))
),
s2 AS (  -- "## comment" lines, horizontal rules, [목차]/[tableofcontents]
    SELECT * REPLACE (CASE WHEN contains(raw_text, '##') OR contains(raw_text, '----')
        THEN regexp_replace(raw_text, '(?m)^(##[^\n]*|-{4,}\s*)$', '', 'g') ELSE raw_text END AS raw_text) FROM s1
),
s3 AS (  -- remaining {{{ }}} braces, MediaWiki {{templates}} and <ref>...</ref> (each regexp only where its literal occurs)
    -- (the braces by two replace()s, which remove the same triples as the regexp's single pass unless removing
    -- a '{' run joins two '}' runs: only possible where '}{{{' occurs, which takes the regexp)
    SELECT * EXCLUDE (s3a, s3b) REPLACE (CASE WHEN NOT (contains(s3b, '{{{') OR contains(s3b, '}}}')) THEN s3b
        WHEN contains(s3b, '}{{{') THEN regexp_replace(s3b, '\{\{\{|\}\}\}', '', 'g')
        ELSE replace(replace(s3b, '{{{', ''), '}}}', '') END AS raw_text)
    FROM (SELECT *, CASE WHEN contains(s3a, '{{') THEN regexp_replace(s3a, '\{\{[^{}]*\}\}', '', 'g') ELSE s3a END AS s3b
    FROM (SELECT *, CASE WHEN contains(raw_text, '<ref') THEN regexp_replace(raw_text, '<ref[^>]*/>|<ref[^>]*>.*?</ref>', '', 'gs') ELSE raw_text END AS s3a
    FROM s2))
),
s4 AS (  -- footnotes [* ...] / [*A ...], which may contain [[links]]: removed with their text
    SELECT * REPLACE (CASE WHEN contains(raw_text, '[*') THEN regexp_replace(raw_text,
        '\[\*[^\[\]]*(?:\[\[[^\]]*\]\][^\[\]]*)*\]', '', 'g') ELSE raw_text END AS raw_text) FROM s3
),
s5 AS (  -- file / category / image links removed entirely
    SELECT * REPLACE (CASE WHEN regexp_matches(raw_text, '\[\[\s*(파일|분류|File|Category|이미지|Image)\s*:') THEN regexp_replace(raw_text,
        '\[\[\s*(파일|분류|File|Category|이미지|Image)\s*:[^\]]*\]\]', '', 'g') ELSE raw_text END AS raw_text) FROM s4
),
s6 AS (  -- [[target|label]] -> label, [[target]] -> target
    SELECT * REPLACE (CASE WHEN contains(raw_text, '[[') THEN regexp_replace(raw_text,
        '\[\[(?:[^\]|]*\|)?((?:[^\[\]|]|\[[^\[\]]*\])*)\]\]', '\1', 'g') ELSE raw_text END AS raw_text) FROM s5
),
s7 AS (  -- [br] -> newline; other macros (after links, so [[x]] is not taken for [x]) [include(...)], [age(...)], [목차], [date] -> removed
    SELECT * REPLACE (CASE WHEN contains(raw_text, '[') THEN regexp_replace(
        replace(replace(raw_text, '[br]', chr(10)), '[BR]', chr(10)),
        '\[[A-Za-z가-힣_]+(\((?:[^()\]]|\([^()]*\))*\))?\]', '', 'g') ELSE raw_text END AS raw_text) FROM s6
),
s8 AS (  -- headings (NamuMark "== x ==", MediaWiki " = = x = = ") become paragraph breaks
    SELECT * REPLACE (CASE WHEN regexp_matches(left(raw_text, 1), '[ \t=]') OR regexp_matches(raw_text, '\n[ \t=]')
        THEN regexp_replace(raw_text,
        '(?m)^[ \t]*=(?:[ \t]*=)*[ \t]*#?[^=\n]+?#?[ \t]*=(?:[ \t]*=)*[ \t]*$', chr(10), 'g') ELSE raw_text END AS raw_text) FROM s7
),
s9 AS (  -- tables: cell attributes <...> and html tags removed; each row stays a line, its cells joined by ' | ' (the
    -- row's outer '||' and empty cells dropped) and a table is followed by a paragraph break (so the next text starts a
    -- paragraph: queries.sql's first_sentence skips table rows by their ' | ' and picks paragraph openings)
    SELECT * EXCLUDE (s9a) REPLACE (CASE WHEN contains(s9a, '||') THEN replace(regexp_replace(regexp_replace(regexp_replace(s9a,
        '\|\|[ \t]*\n([ \t]*[^|\s])', '||' || chr(10) || chr(10) || '\1', 'g'),
        '\|\|(?:[ \t]*\|\|)+', '||', 'g'),
        '(?m)^[ \t]*\|\||\|\|[ \t]*$', '', 'g'),
        '||', ' | ') ELSE s9a END AS raw_text)
    FROM (SELECT *, CASE WHEN contains(raw_text, '<') THEN regexp_replace(raw_text,
        '<[^<>\n]{0,120}>', '', 'g') ELSE raw_text END AS s9a FROM s8)
),
s10 AS (  -- strikethrough content removed; bold/italic/underline/sup/sub markers removed
    -- list markers / quotes at line starts (only texts that have one: the guard is the same pattern split into
    -- the first line and the lines after a '\n', which RE2 finds fast by that literal, unlike '(?m)^')
    SELECT * REPLACE (CASE WHEN regexp_matches(s10c, '^[ \t]*(>|\*+[ \t]|[0-9]+\.[ \t])') OR regexp_matches(s10c, '\n[ \t]*(>|\*+[ \t]|[0-9]+\.[ \t])')
        -- (a quote block is followed by a paragraph break: the line after its last '>' line starts a paragraph)
        THEN regexp_replace(regexp_replace(s10c, '(^|\n)([ \t]*>[^\n]*)\n([ \t]*[^>\s])', '\1\2' || chr(10) || chr(10) || '\3', 'g'),
                            '(?m)^[ \t]*(>+[ \t]*|\*+[ \t]+|[0-9]+\.[ \t]+)', '', 'g') ELSE s10c END AS raw_text)
    FROM (SELECT *,
        -- texts whose only markers are quotes: two plain replace()s give the same result as the regexp
        CASE WHEN contains(s10b, '__') OR contains(s10b, '^^') OR contains(s10b, ',,')
             THEN regexp_replace(s10b, '''''''|''''|__|\^\^|,,', '', 'g')
             WHEN contains(s10b, '''''') THEN replace(replace(s10b, '''''''', ''), '''''', '')
             ELSE s10b END AS s10c
    FROM (SELECT *,
        CASE WHEN contains(s10a, '--') THEN regexp_replace(s10a, '(^|[^-])--[^-\s][^\n]*?--', '\1', 'g') ELSE s10a END AS s10b
    FROM (SELECT *,
        CASE WHEN contains(raw_text, '~~') THEN regexp_replace(raw_text, '~~[^~\n]*~~', '', 'g') ELSE raw_text END AS s10a
    FROM s9)))
),
s11 AS (  -- whitespace: each run of whitespace becomes ' ' (no line break in it), '\n' (one) or '\n\n' (two or more); trimmed.
    -- Same result as '[ \t\x0B\f\x{00A0}\x{3000}]+' -> ' ', ' ?\n ?' -> '\n', '\n{3,}' -> '\n\n', trim(' \n'), in two
    -- passes: the rare tab / VT / FF / NBSP / U+3000 become spaces, then one regexp rewrites the runs that change
    -- (each step only on texts that contain what it would change: regexp_replace copies every string)
    SELECT * EXCLUDE (s10a, s10b, s10c, s11a, s11b) REPLACE (
        CASE WHEN starts_with(s11b, ' ') OR starts_with(s11b, chr(10)) OR ends_with(s11b, ' ') OR ends_with(s11b, chr(10))
             THEN trim(s11b, ' ' || chr(10)) ELSE s11b END AS raw_text)
    FROM (SELECT *,
        CASE WHEN contains(s11a, '  ') OR contains(s11a, ' ' || chr(10)) OR contains(s11a, chr(10) || ' ')
                  OR contains(s11a, chr(10) || chr(10) || chr(10))
             -- the runs that change: two or more line breaks with a space or a third one; one line break with a
             -- space; two or more spaces (each branch captures its output; a run that needs no change never matches)
             THEN regexp_replace(s11a, ' +(\n) *(\n)[ \n]*|(\n) +(\n)[ \n]*|(\n\n)[ \n]+| +(\n) *|(\n) +| ( )+',
                                 '\1\2\3\4\5\6\7\8', 'g') ELSE s11a END AS s11b
    FROM (SELECT *,
        CASE WHEN contains(raw_text, chr(9)) OR contains(raw_text, chr(11)) OR contains(raw_text, chr(12))
                  OR contains(raw_text, chr(160)) OR contains(raw_text, chr(12288))
             THEN regexp_replace(raw_text, '[\t\x0B\f\x{00A0}\x{3000}]', ' ', 'g') ELSE raw_text END AS s11a
    FROM s10))
),
s12 AS (  -- the literals' markup characters back (s1)
    SELECT * EXCLUDE (lit) REPLACE (CASE WHEN lit THEN translate(raw_text, chr(64978)||chr(64979)||chr(64980)||chr(64981)||chr(64982)||chr(64983)||chr(64984)||chr(64985)||chr(64986)||chr(64987)||chr(64988)||chr(64989)||chr(64990)||chr(64991)||chr(64992)||chr(64993)||chr(64994), '[]{}<>|''_^,~-=#*.')
        ELSE raw_text END AS raw_text) FROM s11
),
flagged AS (
    SELECT
        source || ':' || base_id || CASE WHEN id_rank > 1 THEN '~' || id_rank ELSE '' END AS doc_id,
        source, orig_id,
        coalesce(url, coalesce(getvariable('source_url_prefix')[source], '') || url_encode(replace(title, ' ', '_'))) AS url,
        title, title_derived, language, namespace, raw_text AS text, length(raw_text) AS n_chars, file, line_no,
        hash(raw_text) AS text_hash,
        CASE
            WHEN NOT list_contains(getvariable('clean_namespaces'), namespace) THEN 'namespace'
            WHEN getvariable('clean_drop_redirects')
                 AND is_redirect THEN 'redirect'
            WHEN length(raw_text) = 0 THEN 'empty_text'
            WHEN length(raw_text) < getvariable('clean_min_chars') THEN 'too_short'
            WHEN length(raw_text) > getvariable('clean_max_chars') THEN 'too_long'
        END AS filter_reason
    FROM s12
)
SELECT
    doc_id, source, orig_id, url, title, title_derived, language, namespace, text, n_chars, file, line_no,
    CASE
        WHEN filter_reason IS NOT NULL THEN filter_reason
        -- exact duplicate texts: the first by (source, file, line) is kept. Grouped by a 64-bit hash and the
        -- length (cheaper than md5 over every text); a row is dropped only if its text equals the group's first
        -- text, so a hash collision can at worst keep a duplicate, never drop a distinct text
        WHEN getvariable('clean_dedupe') AND row_number() OVER w > 1 AND first_value(text) OVER w = text
            THEN 'duplicate_text'
    END AS drop_reason
FROM flagged
WINDOW w AS (PARTITION BY text_hash, n_chars, filter_reason IS NULL ORDER BY source, file, line_no)
ORDER BY doc_id

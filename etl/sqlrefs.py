"""What a SQL model reads, from its text: the layers after ``FROM`` / ``JOIN`` and the ``getvariable`` names.

The stage list (:data:`etl.pipeline.STAGES`) takes each SQL stage's inputs and config keys from
this, so they cannot drift from the file: a model that starts reading a layer has it as an input
(its fingerprint follows that layer), and one that starts reading a variable re-runs when the
setting behind it changes (:data:`etl.config.SQL_VARIABLES`). dbt's ``ref()`` guarantee, without
the ``ref()``: the layer names are plain table names, so only names of known layers count (CTE
names and table functions such as ``read_parquet(...)`` are not layers).

    >>> refs = model_refs("WITH q AS (SELECT * FROM queries) "
    ...                   "SELECT * FROM q JOIN passages p ON getvariable('n_hard') > 0 -- FROM chunks",
    ...                   known_layers={"queries", "passages", "chunks"})
    >>> refs.layers, refs.variables
    (('passages', 'queries'), ('n_hard',))
"""

from __future__ import annotations

import re
from collections.abc import Collection
from dataclasses import dataclass

# a string literal, a quoted identifier, a line comment, a block comment (in the order SQL reads them)
_TOKENS = re.compile(r"'(?:[^']|'')*'|\"(?:[^\"]|\"\")*\"|--[^\n]*|/\*.*?\*/", re.S)
_CONTRACT = re.compile(r"^\s*--\s*@(?:unique|not_null|check):(.*)$", re.M)
_VARIABLE = re.compile(r"\bgetvariable\s*\(\s*'([^']+)'\s*\)", re.I)
_TABLE = re.compile(r"\b(?:FROM|JOIN)\s+([A-Za-z_][A-Za-z0-9_]*)\b(?!\s*\()", re.I)
_CTE = re.compile(r"(?:\bWITH(?:\s+RECURSIVE)?|,)\s*([A-Za-z_][A-Za-z0-9_]*)\s+AS\s*(?:NOT\s+)?(?:MATERIALIZED\s*)?\(",
                  re.I)


@dataclass(frozen=True)
class ModelRefs:
    """The layers and DuckDB variables a SQL model reads, each sorted and without repeats."""

    layers: tuple[str, ...]
    variables: tuple[str, ...]


def _code(sql: str, keep_strings: bool) -> str:
    """``sql`` without comments (and, unless ``keep_strings``, with every string literal emptied)."""
    def sub(m: re.Match[str]) -> str:
        tok = m.group(0)
        if tok.startswith(("--", "/*")):
            return " "
        return tok if keep_strings or tok.startswith('"') else "''"
    return _TOKENS.sub(sub, sql)


def model_refs(sql: str, known_layers: Collection[str]) -> ModelRefs:
    """The layers (among ``known_layers``) and variables a SQL model's text reads.

    Variables count in the code and in the contract lines (``-- @check: ... getvariable('x')``,
    evaluated on the layer), not in other comments; layers count in the code only, and a name the
    file defines as a CTE (``WITH chunks AS (...)``) is not the layer of that name.
    """
    code = _code(sql, keep_strings=True)
    contracts = "\n".join(m.group(1) for m in _CONTRACT.finditer(sql))
    variables = {v for text in (code, contracts) for v in _VARIABLE.findall(text)}
    bare = _code(sql, keep_strings=False)
    ctes = {c.lower() for c in _CTE.findall(bare)}  # a CTE named like a layer hides it
    tables = {t.lower() for t in _TABLE.findall(bare)} - ctes
    return ModelRefs(tuple(sorted(tables & set(known_layers))), tuple(sorted(variables)))

"""``idf.json`` for inference-free sparse models: the idf of each token of a tokenizer over the passages.

An inference-free sparse model weights a query's tokens from a fixed table instead of running a
model on the query; the OpenSearch trainer starts that table from the corpus idf. With
``export.idf_tokenizer`` set (a local tokenizer directory or a hub name), the export writes::

    {"<token>": idf, ...}     idf(t) = log(1 + (N - df(t) + 0.5) / (df(t) + 0.5))

N = the number of passages, df(t) = the passages whose tokenization (no special tokens added)
holds token t at least once. The tokenizer's special tokens ([CLS], [PAD], ...) are left out, as
are tokens that occur in no passage. Keys are token strings (``convert_ids_to_tokens``), sorted.
Passages are read in batches of ``BATCH`` from the ``passages`` layer, so memory stays at one batch
plus one counter per distinct token.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable
from typing import Any

BATCH = 2048


def load_tokenizer(name_or_path: str) -> Any:
    """``transformers.AutoTokenizer.from_pretrained(name_or_path)``; a clear error when it cannot be had."""
    try:
        from transformers import AutoTokenizer
    except ImportError as exc:
        raise RuntimeError("export.idf_tokenizer needs the transformers package: pip install 'ko-sparse-etl[st]'") \
            from exc
    try:
        return AutoTokenizer.from_pretrained(name_or_path)
    except (OSError, ValueError) as exc:
        raise RuntimeError(f"export.idf_tokenizer = {name_or_path!r}: cannot load a tokenizer from it ({exc})") \
            from exc


def idf(n_docs: int, df: int) -> float:
    """log(1 + (N - df + 0.5) / (df + 0.5))."""
    return math.log(1.0 + (n_docs - df + 0.5) / (df + 0.5))


def compute_idf(tokenizer: Any, batches: Iterable[list[str]]) -> tuple[dict[str, float], int]:
    """The idf table over the texts of ``batches`` and the number of texts N."""
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    df: Counter[int] = Counter()
    n = 0
    for texts in batches:
        if not texts:
            continue
        n += len(texts)
        for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]:
            df.update(set(ids) - special)
    tokens = tokenizer.convert_ids_to_tokens(sorted(df))
    table = {tok: idf(n, df[i]) for i, tok in zip(sorted(df), tokens, strict=True)}
    return dict(sorted(table.items())), n


def passage_batches(con: Any, size: int = BATCH) -> Iterable[list[str]]:
    """The passages layer's texts in passage_id order, ``size`` at a time."""
    res = con.execute("SELECT text FROM passages ORDER BY passage_id")
    while rows := res.fetchmany(size):
        yield [r[0] for r in rows]


def write_idf(con: Any, tokenizer_name: str, path: Any) -> dict[str, Any]:
    """Write ``path`` (idf.json) from the passages; return a summary for metadata.json."""
    import json

    from .warehouse import atomic_write_text

    tokenizer = load_tokenizer(tokenizer_name)
    table, n = compute_idf(tokenizer, passage_batches(con))
    atomic_write_text(path, json.dumps(table, ensure_ascii=False))
    return {"tokenizer": tokenizer_name, "passages": n, "tokens": len(table)}

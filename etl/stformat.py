"""The export in sentence-transformers' sparse training format: ``st/train`` and ``st/validation``.

Each split is a ``datasets`` directory (``save_to_disk``; ``datasets.load_from_disk`` reads it)
with one row per record and the columns ``SparseEncoderTrainer`` takes for a distillation loss::

    query, positive, negative_1, .., negative_n, label

``positive`` is ``docs[0]``, ``negative_i`` is ``docs[i]`` and ``label`` is the record's ``scores``
in the same order (the teacher's score of [positive, negative_1, .., negative_n]). That is the
input of ``SparseDistillKLDivLoss`` (inside ``SpladeLoss``); ``SparseMarginMSELoss`` takes the
differences ``label[0] - label[i]``, which a ``map`` computes from it. Rows are written from the
JSONL one at a time through the ``datasets`` Arrow writer, so memory does not grow with the split.
A split with no records (a small corpus can give an empty ``val.jsonl``) is skipped and reported.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .hfexport import SKIPPED_NO_DATASETS, _progress_bars, count_records

# st split name -> the JSONL file it is made from
ST_SPLITS = {"train": "train.jsonl", "validation": "val.jsonl"}


def st_columns(n_docs: int) -> list[str]:
    """``query, positive, negative_1 .. negative_{n_docs - 1}, label``."""
    return ["query", "positive", *(f"negative_{i}" for i in range(1, n_docs)), "label"]


def st_row(record: dict[str, Any]) -> dict[str, Any]:
    """One JSONL record ``{query, docs, scores}`` as an st row."""
    docs = record["docs"]
    row: dict[str, Any] = {"query": record["query"], "positive": docs[0]}
    row.update({f"negative_{i}": d for i, d in enumerate(docs[1:], start=1)})
    row["label"] = [float(s) for s in record["scores"]]
    return row


def _rows(path: str) -> Iterator[dict[str, Any]]:
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                yield st_row(json.loads(line))


def export_st(export_dir: Path, n_docs: int, final_dir: Path | None = None) -> dict[str, Any]:
    """Write ``export_dir/st/{train,validation}`` from ``train.jsonl`` / ``val.jsonl`` in ``export_dir``.

    Returns a summary for metadata.json (``{"path", "columns", "splits": {"train": {"rows", "path"},
    "validation": {...} | {"skipped": why}}}``; paths under ``final_dir`` when given), or
    ``{"skipped": reason}`` when the ``datasets`` package is missing.
    """
    try:
        import datasets
    except ImportError:
        return {"skipped": SKIPPED_NO_DATASETS}

    export_dir = Path(export_dir)
    root = export_dir / "st"
    root.mkdir(parents=True, exist_ok=True)
    shown = (Path(final_dir) if final_dir is not None else export_dir) / "st"
    list_type = getattr(datasets, "List", None) or datasets.Sequence
    cols = st_columns(n_docs)
    features = datasets.Features({c: datasets.Value("string") for c in cols[:-1]}
                                 | {"label": list_type(datasets.Value("float64"))})
    summary: dict[str, Any] = {"path": str(shown), "columns": cols, "splits": {}}
    bars_were_on = _progress_bars(datasets, enable=False)
    try:
        for split, name in ST_SPLITS.items():
            src, final = export_dir / name, root / split
            n = count_records(src)
            shutil.rmtree(final, ignore_errors=True)
            if n == 0:
                summary["splits"][split] = {"skipped": f"{name}: {'no records' if src.exists() else 'no such file'}"}
                continue
            cache = root / f".cache.{split}"
            try:
                ds = datasets.Dataset.from_generator(_rows, gen_kwargs={"path": str(src)}, features=features,
                                                     cache_dir=str(cache))
                if ds.num_rows != n:
                    raise RuntimeError(f"{src}: {n} records but {ds.num_rows} st rows")
                ds.save_to_disk(str(final))
                del ds
            finally:
                shutil.rmtree(cache, ignore_errors=True)
            summary["splits"][split] = {"rows": n, "path": str(shown / split)}
    finally:
        if bars_were_on:
            _progress_bars(datasets, enable=True)
    return summary

"""Export ``train.jsonl`` / ``val.jsonl`` as Hugging Face ``datasets`` directories.

The OpenSearch sparse-model tuning sample does not read JSONL: its loader calls
``datasets.Dataset.load_from_disk(path)``. This module does the
``Dataset.from_json(...).save_to_disk(...)`` step for the user, writing::

    <export_dir>/datasets/train     load_from_disk-able, features query / docs / scores
    <export_dir>/datasets/val

Features are fixed: ``query`` string, ``docs`` list of strings, ``scores`` list of float64 (the
features of the published MS MARCO distillation set). Each split is saved to a temporary directory
and renamed over the previous one, so a reader never sees a half-written split (the pipeline's
export builds ``datasets/`` in its staging directory and swaps the whole export in). A split whose
JSONL file holds no records (a small corpus can give an empty ``val.jsonl``) is skipped and reported, and
a stale directory from an earlier export is removed. ``datasets`` is optional (``pip install -e
'.[hf]'``): without it the export is skipped with a message rather than failing.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

SPLITS = ("train", "val")
SKIPPED_NO_DATASETS = "datasets not installed (pip install -e '.[hf]')"


def _features(datasets: Any, first_rank: bool = False) -> Any:
    """query: string, docs: list of string, scores: list of float64 (+ first_rank: int64)."""
    list_type = getattr(datasets, "List", None) or datasets.Sequence  # List since datasets 4.0
    return datasets.Features({
        "query": datasets.Value("string"),
        "docs": list_type(datasets.Value("string")),
        "scores": list_type(datasets.Value("float64")),
        **({"first_rank": datasets.Value("int64")} if first_rank else {}),
    })


def _progress_bars(datasets: Any, enable: bool) -> bool:
    """Switch the ``datasets`` progress bars on or off; return whether they were on before."""
    logging_mod = getattr(getattr(datasets, "utils", None), "logging", None)
    is_on = getattr(datasets, "is_progress_bar_enabled", None) or getattr(logging_mod, "is_progress_bar_enabled", None)
    was_on = bool(is_on()) if is_on else False
    name = "enable_progress_bars" if enable else "disable_progress_bars"
    fn = getattr(datasets, name, None) or getattr(datasets, name[:-1], None)  # older: *_progress_bar
    if fn is not None:
        fn()
    return was_on


def count_records(path: Path) -> int:
    """Non-blank lines of a JSONL file (0 when the file is missing)."""
    if not path.exists():
        return 0
    with open(path, "rb") as fh:
        return sum(1 for line in fh if line.strip())


def _remove_tree(path: Path) -> None:
    """Remove a directory by renaming it aside first, so its name is free at once."""
    if not path.exists():
        return
    trash = path.with_name(f".{path.name}.old.{os.getpid()}")
    shutil.rmtree(trash, ignore_errors=True)
    os.replace(path, trash)
    shutil.rmtree(trash, ignore_errors=True)


def _swap_in(tmp: Path, final: Path) -> None:
    """Put the finished directory ``tmp`` at ``final``, replacing an older one."""
    if final.exists():
        old = final.with_name(f".{final.name}.old.{os.getpid()}")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)


def export_datasets(export_dir: Path, final_dir: Path | None = None, first_rank: bool = False) -> dict[str, Any]:
    """Convert ``train.jsonl`` and ``val.jsonl`` in ``export_dir`` into ``export_dir/datasets/{train,val}``.

    Returns a summary for metadata.json: ``{"path": ..., "features": ..., "splits": {"train":
    {"rows": n, "path": ...}, "val": {"skipped": "..."}}}``, or ``{"skipped": reason}`` when the
    ``datasets`` package is not installed. Its paths name ``final_dir`` instead of ``export_dir``
    when given (the export builds in a staging directory that is renamed to the export directory).
    ``first_rank``: the records carry it (``export.first_rank``), as an int64 column.
    """
    try:
        import datasets
    except ImportError:
        return {"skipped": SKIPPED_NO_DATASETS}

    export_dir = Path(export_dir)
    root = export_dir / "datasets"
    root.mkdir(parents=True, exist_ok=True)
    features = _features(datasets, first_rank)
    shown = Path(final_dir) / "datasets" if final_dir is not None else root
    summary: dict[str, Any] = {
        "path": str(shown),
        "features": {"query": "string", "docs": "list<string>", "scores": "list<float64>",
                     **({"first_rank": "int64"} if first_rank else {})},
        "splits": {},
    }
    bars_were_on = _progress_bars(datasets, enable=False)
    try:
        for split in SPLITS:
            src = export_dir / f"{split}.jsonl"
            final = root / split
            n = count_records(src)
            if n == 0:
                _remove_tree(final)  # an older export's split would no longer match the JSONL
                why = "no such file" if not src.exists() else "no records"
                summary["splits"][split] = {"skipped": f"{src.name}: {why}"}
                continue
            tmp = root / f".{split}.tmp.{os.getpid()}"
            cache = root / f".cache.{os.getpid()}"
            shutil.rmtree(tmp, ignore_errors=True)
            try:
                ds = datasets.Dataset.from_json(str(src), features=features, cache_dir=str(cache))
                if ds.num_rows != n:
                    raise RuntimeError(f"{src}: {n} records but datasets read {ds.num_rows}")
                ds.save_to_disk(str(tmp))
                del ds
                _swap_in(tmp, final)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
                shutil.rmtree(cache, ignore_errors=True)
            summary["splits"][split] = {"rows": n, "path": str(shown / split)}
    finally:
        if bars_were_on:
            _progress_bars(datasets, enable=True)
    return summary

"""Per-query stages and the export run in batches (bounded memory at millions of queries).

* ``duckdb.batch_queries``: the ``examples`` layer is written one query_id range at a time and the
  parts concatenated (``Warehouse.materialize_sql_batched``); ``export.batch_records``: the JSONL is
  written one batch of records at a time, texts joined per batch (``sql/export_records.sql``).
  Small batch sizes (several batches, uneven last batch, a batch of one) must give the same
  ``examples`` rows in the same order and byte-identical JSONL as one batch.
* ``query_batches`` covers every query exactly once, in ascending ranges.
"""

from __future__ import annotations

import shutil

import pytest

from etl.config import ConfigError, load_config
from etl.export import export
from etl.pipeline import STAGES, Context, query_batches, run_stage
from etl.warehouse import Warehouse

EXAMPLES = next(s for s in STAGES if s.name == "examples")


def _copy_run(src, dst, overrides: list[str]):
    shutil.copytree(src.warehouse, dst / "warehouse")
    cfg = load_config(src.config, [f'paths.warehouse="{dst / "warehouse"}"', f'paths.export="{dst / "export"}"',
                                   "export.datasets=false", *overrides])
    return cfg


@pytest.mark.parametrize("batch_queries,batch_records", [(7, 5), (1, 1)])
def test_batched_examples_and_export_equal_one_batch(tiny_reference_run, tmp_path, batch_queries, batch_records):
    ref = tiny_reference_run
    n_queries = ref.q("SELECT count(*) FROM queries")[0][0]
    assert n_queries > 3 * batch_queries or batch_queries == 1
    cfg = _copy_run(ref, tmp_path, [f"duckdb.batch_queries={batch_queries}", f"export.batch_records={batch_records}"])
    wh = Warehouse(cfg)
    try:
        ctx = Context(cfg, wh)
        assert len(query_batches(ctx, batch_queries)) == -(-n_queries // batch_queries)
        res = run_stage(EXAMPLES, ctx, force=True)
        assert res.rows == ref.q("SELECT count(*) FROM examples")[0][0] > 0
        got = wh.con.execute("SELECT * FROM examples").fetchall()  # file order = the layer's order
        want = ref.q("SELECT * FROM examples")
        assert got == want
        assert not list((tmp_path / "warehouse" / "layers").glob(".examples*"))  # no part files left
        export(ctx, force=True, log=lambda _m: None)
    finally:
        wh.close()
    for name in ("train.jsonl", "val.jsonl"):
        assert (tmp_path / "export" / name).read_bytes() == (ref.export / name).read_bytes(), name
    assert not [p for p in (tmp_path / "export").iterdir() if p.name.startswith(".")]  # no temp/part files


def test_query_batches_cover_every_query_once(tiny_reference_run, tmp_path):
    cfg = _copy_run(tiny_reference_run, tmp_path, [])
    wh = Warehouse(cfg)
    try:
        ctx = Context(cfg, wh)
        ids = [r[0] for r in wh.con.execute("SELECT query_id FROM queries ORDER BY query_id").fetchall()]
        for size in (1, 3, len(ids) - 1, len(ids), len(ids) + 5):
            bounds = query_batches(ctx, size)
            seen = [q for lo, hi in bounds for q in ids if q >= lo and (hi is None or q < hi)]
            assert seen == ids, size
            assert bounds[-1][1] is None and all(a[1] == b[0] for a, b in zip(bounds, bounds[1:], strict=False))
    finally:
        wh.close()


@pytest.mark.parametrize("key", ["duckdb.batch_queries", "export.batch_records"])
def test_batch_sizes_must_be_positive(key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(None, [f"{key}=0"])

"""Per-query stages and the export run in batches (bounded memory at millions of queries).

* ``duckdb.batch_queries``: the ``examples`` layer is written one query_id range at a time and the
  parts concatenated (``Warehouse.materialize_sql_batched``); ``export.batch_records``: the JSONL is
  written one batch of records at a time, texts joined per batch (``etl/sql/export_records.sql``).
  Small batch sizes (several batches, uneven last batch, a batch of one) must give the same
  ``examples`` rows in the same order and byte-identical JSONL as one batch.
* ``query_batches`` covers every query exactly once, in ascending ranges.
* the embedding stages' prefill (cache misses embedded in large chunks before the SQL model runs)
  gives the vectors the UDF path gives, and leaves the UDFs nothing to do.
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
        export(ctx, log=lambda _m: None)
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


def test_embedding_prefill_matches_the_udf_path(tmp_path, tiny_model, tiny_corpus):
    """With the cache on, the embedding stages embed their cache misses in large chunks before the
    SQL runs (``EmbeddingUDFs.prefill``), so the UDFs are never called; with the cache off the UDFs
    embed row by row. Both give the same vectors for every passage, query and positive text."""
    import numpy as np
    from etl_helpers import run_stages, tiny_run_dirs

    from etl import embed

    layers = {}
    for cache in (True, False):
        dirs = tiny_run_dirs(tmp_path / f"cache_{cache}", tiny_corpus, tiny_model,
                             settings={"embedding": {"cache": cache}})
        cfg = load_config(dirs.config)
        calls = []
        orig = embed.EmbeddingUDFs._udf

        def counting(self, kind, _orig=orig, _calls=calls):
            fn = _orig(self, kind)
            return lambda texts: (_calls.append(len(texts)), fn(texts))[1]

        embed.EmbeddingUDFs._udf = counting
        try:
            wh = run_stages(cfg, "query_embeddings")
        finally:
            embed.EmbeddingUDFs._udf = orig
        try:
            layers[cache] = {
                "p": wh.con.execute("SELECT passage_id, embedding FROM passage_embeddings ORDER BY 1").fetchall(),
                "q": wh.con.execute("SELECT query_id, embedding, positive_embedding FROM query_embeddings "
                                    "ORDER BY 1").fetchall()}
        finally:
            wh.close()
        assert (sum(calls) == 0) if cache else (sum(calls) > 0), (cache, sum(calls))
    on, off = layers[True], layers[False]
    assert [r[0] for r in on["p"]] == [r[0] for r in off["p"]] and len(on["p"]) > 50
    np.testing.assert_allclose(np.array([r[1] for r in on["p"]]), np.array([r[1] for r in off["p"]]), atol=1e-5)
    assert [r[0] for r in on["q"]] == [r[0] for r in off["q"]]
    np.testing.assert_allclose(np.array([r[1] for r in on["q"]]), np.array([r[1] for r in off["q"]]), atol=1e-5)
    pos_on = [r[2] for r in on["q"]]
    pos_off = [r[2] for r in off["q"]]
    assert [p is None for p in pos_on] == [p is None for p in pos_off] and any(p is not None for p in pos_on)
    np.testing.assert_allclose(np.array([p for p in pos_on if p is not None]),
                               np.array([p for p in pos_off if p is not None]), atol=1e-5)

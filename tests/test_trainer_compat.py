"""Our export, read the way the OpenSearch sparse-model trainer reads it.

The trainer calls ``datasets.Dataset.load_from_disk(path)``, cuts every record into groups of
``sample_num_one_query`` docs by a stride (``step = n // sample_num``; group i = docs i, i+step,
...), silently drops records with fewer docs than the group size and docs past
``step * sample_num``, and computes ``KLDivLoss(reduction="none")(log_softmax(student / T),
softmax(teacher / T)).sum(1).mean(0)``. These tests run that on our own export: no record may be
dropped, no doc left over, and the loss must be finite on every group.

The pipeline runs here (module-scoped) on the bundled sample corpus with a tiny model built in the
test (tests/tiny_models.py): a 2-layer BERT (hidden 32) whose attention and feed-forward outputs are
zeroed, so each embedding is the mean of random token vectors, a bag-of-tokens projection that
ranks lexically similar passages close enough for the default filters to leave records. A second run adds the real
Namuwiki records from ``../shared/data/namuwiki-raw`` (two of them 250k-520k characters), skipped
when that directory is absent.
"""

from __future__ import annotations

import json
import sys
from itertools import chain
from pathlib import Path
from typing import Any

import duckdb
import pytest

pytest.importorskip("torch")
pytest.importorskip("sentence_transformers")
pytest.importorskip("datasets")

import torch  # noqa: E402
from tiny_models import build_tiny_embedder  # noqa: E402

from etl.config import load_config  # noqa: E402
from etl.hfexport import SKIPPED_NO_DATASETS, export_datasets  # noqa: E402
from etl.pipeline import run_pipeline  # noqa: E402

NAMUWIKI_RAW = Path(__file__).resolve().parents[2] / "shared" / "data" / "namuwiki-raw"
SAMPLE_NUM = 2  # sample_num_one_query in every shipped trainer config
TEMPERATURE = 1.0


# ---- pipeline runs ---------------------------------------------------------------------------

def _toml_str(value: str) -> str:
    return json.dumps(value)  # JSON string escapes are valid TOML basic-string escapes


def write_sources_toml(path: Path, sources: list[tuple[str, list[str]]]) -> Path:
    """A config file holding only [[sources]] tables (everything else: defaults + overrides)."""
    lines = []
    for name, globs in sources:
        lines += ["[[sources]]", f"name = {_toml_str(name)}",
                  "paths = [" + ", ".join(_toml_str(g) for g in globs) + "]", ""]
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


SAMPLE_SOURCES = [("wikipedia_ko", ["{sample}/wikipedia_ko/*.jsonl"]),
                  ("namuwiki", ["{sample}/namuwiki/*.jsonl", "{sample}/namuwiki/*.json"])]


def run_tiny(root: Path, model: Path, sources: list[tuple[str, list[str]]], *overrides: str) -> dict[str, Any]:
    """Run the whole pipeline with the tiny model into ``root``, then export the datasets dirs."""
    root.mkdir(parents=True, exist_ok=True)
    toml = write_sources_toml(root / "config.toml", sources)
    cfg = load_config(toml, [f"paths.warehouse={root / 'warehouse'}", f"paths.export={root / 'export'}",
                             f"embedding.model={model}", "run.progress=false", *overrides])
    meta = run_pipeline(cfg, log=lambda *_: None)
    hf = export_datasets(cfg.export_dir)
    return {"cfg": cfg, "meta": meta, "hf": hf, "root": root}


def layers_con(warehouse: Path) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB with a view per layer Parquet file (no lock on the warehouse)."""
    con = duckdb.connect()
    for p in sorted((warehouse / "layers").glob("*.parquet")):
        con.execute(f"CREATE VIEW {p.stem} AS SELECT * FROM read_parquet('{p}')")
    return con


@pytest.fixture(scope="module")
def tiny_embedder(tmp_path_factory) -> Path:
    return build_tiny_embedder(tmp_path_factory.mktemp("compat_model"))


@pytest.fixture(scope="module")
def compat_run(tmp_path_factory, tiny_embedder) -> dict[str, Any]:
    return run_tiny(tmp_path_factory.mktemp("compat_run"), tiny_embedder, SAMPLE_SOURCES)


@pytest.fixture(scope="module")
def namuwiki_run(tmp_path_factory, tiny_embedder) -> dict[str, Any]:
    if not NAMUWIKI_RAW.is_dir() or not list(NAMUWIKI_RAW.glob("*.json")):
        pytest.skip(f"real Namuwiki records not found at {NAMUWIKI_RAW}")
    sources = SAMPLE_SOURCES + [("namuwiki_raw", [str(NAMUWIKI_RAW / "*.json")])]
    return run_tiny(tmp_path_factory.mktemp("namuwiki_run"), tiny_embedder, sources)


# ---- the trainer's view ----------------------------------------------------------------------

def stride_groups(n: int, sample_num: int = SAMPLE_NUM) -> list[list[int]]:
    """The trainer's grouping of a record's docs (KnowledgeDistillDataset)."""
    step = n // sample_num
    return [[k * step + i for k in range(sample_num)] for i in range(step)]


def lexical_student(query: str, doc: str) -> float:
    """A deterministic stand-in for the student's score: character-bigram overlap."""
    grams = lambda s: {s[i:i + 2] for i in range(len(s) - 1)}  # noqa: E731
    q, d = grams(query), grams(doc)
    return 10.0 * len(q & d) / max(len(q), 1)


def trainer_kl(teacher: torch.Tensor, student: torch.Tensor, temperature: float = TEMPERATURE) -> torch.Tensor:
    """The trainer's kldiv loss per group: KLDivLoss(none)(log_softmax(s/T), softmax(t/T)).sum(1)."""
    loss = torch.nn.KLDivLoss(reduction="none")
    return loss(torch.log_softmax(student / temperature, dim=1), torch.softmax(teacher / temperature, dim=1)).sum(1)


def check_trainer_view(export_dir: Path, meta: dict[str, Any]) -> dict[str, int]:
    """Load each split as the trainer does, group it, compute the loss; return records per split."""
    from datasets import Dataset

    seen: dict[str, int] = {}
    for split, expected in (("train", meta["train_samples"]), ("val", meta["val_samples"])):
        path = export_dir / "datasets" / split
        if expected == 0:
            assert not path.exists(), f"{split}: empty split should not leave a datasets dir"
            continue
        ds = Dataset.load_from_disk(str(path))
        assert ds.num_rows == expected
        lines = [json.loads(x) for x in (export_dir / f"{split}.jsonl").read_text(encoding="utf-8").splitlines()]
        assert len(lines) == ds.num_rows
        teacher_rows, student_rows, owners = [], [], []
        for idx, rec in enumerate(ds):
            docs, scores = rec["docs"], rec["scores"]
            n = len(docs)
            assert len(scores) == n, f"record {idx}: {len(scores)} scores for {n} docs (trainer IndexError)"
            assert n >= SAMPLE_NUM, f"record {idx}: {n} docs, the trainer drops it"
            step = n // SAMPLE_NUM
            assert n % SAMPLE_NUM == 0 and step * SAMPLE_NUM == n, f"record {idx}: docs left over"
            groups = stride_groups(n)
            assert sorted(chain.from_iterable(groups)) == list(range(n))
            assert rec == lines[idx], "datasets row differs from the JSONL line"
            for g in groups:
                teacher_rows.append([float(scores[i]) for i in g])
                student_rows.append([lexical_student(rec["query"], docs[i]) for i in g])
                owners.append(idx)
        assert set(owners) == set(range(ds.num_rows)), "some record produced no group"
        per_group = trainer_kl(torch.tensor(teacher_rows, dtype=torch.float64),
                               torch.tensor(student_rows, dtype=torch.float64))
        assert per_group.shape[0] == sum(len(stride_groups(len(r))) for r in ds["docs"])
        assert torch.isfinite(per_group).all()
        assert (per_group >= -1e-9).all()
        assert torch.isfinite(per_group.mean())
        # random students too (fixed seed): still finite everywhere
        gen = torch.Generator().manual_seed(7)
        rand = torch.randn(per_group.shape[0], SAMPLE_NUM, generator=gen, dtype=torch.float64) * 5
        assert torch.isfinite(trainer_kl(torch.tensor(teacher_rows, dtype=torch.float64), rand)).all()
        seen[split] = ds.num_rows
    return seen


# ---- tests: bundled sample corpus ------------------------------------------------------------

def test_run_produced_records(compat_run):
    meta = compat_run["meta"]
    assert meta["total_queries"] > 20, meta.get("dropped_queries")
    assert meta["docs_per_query"] % SAMPLE_NUM == 0


def test_datasets_dirs_have_the_trainer_features(compat_run):
    from datasets import Dataset

    hf = compat_run["hf"]
    assert hf["splits"]["train"]["rows"] == compat_run["meta"]["train_samples"]
    ds = Dataset.load_from_disk(str(compat_run["cfg"].export_dir / "datasets" / "train"))
    assert set(ds.column_names) == {"query", "docs", "scores"}
    f = ds.features
    assert f["query"].dtype == "string"
    assert f["docs"].feature.dtype == "string"
    assert f["scores"].feature.dtype == "float64"


def test_trainer_grouping_and_kl_loss(compat_run):
    seen = check_trainer_view(compat_run["cfg"].export_dir, compat_run["meta"])
    assert sum(seen.values()) == compat_run["meta"]["total_queries"]


def test_stride_pairs_match_the_reference():
    assert stride_groups(8) == [[0, 4], [1, 5], [2, 6], [3, 7]]
    assert stride_groups(7) == [[0, 3], [1, 4], [2, 5]]  # doc 6 would be dropped: why we export even n


def test_kl_ignores_shifts_but_not_scaling():
    t = torch.tensor([[30.0, 12.0], [18.0, 0.0]], dtype=torch.float64)
    s = torch.tensor([[1.0, 2.0], [0.5, 0.1]], dtype=torch.float64)
    assert torch.allclose(trainer_kl(t, s), trainer_kl(t + 5.0, s))
    assert not torch.allclose(trainer_kl(t, s), trainer_kl(t / 10.0, s))


def test_export_datasets_is_idempotent_and_atomic(compat_run):
    export_dir = compat_run["cfg"].export_dir
    again = export_datasets(export_dir)
    assert again["splits"]["train"]["rows"] == compat_run["meta"]["train_samples"]
    leftovers = [p.name for p in (export_dir / "datasets").iterdir() if p.name.startswith(".")]
    assert leftovers == []


def test_export_datasets_empty_val(tmp_path, compat_run):
    src = compat_run["cfg"].export_dir
    (tmp_path / "train.jsonl").write_bytes((src / "train.jsonl").read_bytes())
    (tmp_path / "val.jsonl").write_text("", encoding="utf-8")
    stale = tmp_path / "datasets" / "val"
    stale.mkdir(parents=True)
    (stale / "old.arrow").write_text("stale", encoding="utf-8")
    out = export_datasets(tmp_path)
    assert out["splits"]["train"]["rows"] == compat_run["meta"]["train_samples"]
    assert "skipped" in out["splits"]["val"]
    assert not stale.exists()
    check_trainer_view(tmp_path, {"train_samples": out["splits"]["train"]["rows"], "val_samples": 0})


def test_export_datasets_without_the_package(tmp_path, monkeypatch):
    (tmp_path / "train.jsonl").write_text('{"query": "q", "docs": ["a", "b"], "scores": [1.0, 0.0]}\n',
                                          encoding="utf-8")
    monkeypatch.setitem(sys.modules, "datasets", None)  # import datasets -> ImportError
    assert export_datasets(tmp_path) == {"skipped": SKIPPED_NO_DATASETS}
    assert not (tmp_path / "datasets").exists()


# ---- tests: real Namuwiki records + the bundled sample ---------------------------------------

def test_namuwiki_records_were_ingested(namuwiki_run):
    con = layers_con(namuwiki_run["cfg"].warehouse_dir)
    try:
        n_docs, longest = con.execute(
            "SELECT count(*), max(n_chars) FROM documents WHERE source = 'namuwiki_raw'").fetchall()[0]
        n_passages = con.execute("SELECT count(*) FROM passages WHERE source = 'namuwiki_raw'").fetchall()[0][0]
    finally:
        con.close()
    assert n_docs >= 5
    assert longest > 100_000  # the 250k-520k character records survive cleaning as documents
    assert n_passages > n_docs


def test_no_hard_negative_from_the_positives_document(namuwiki_run):
    con = layers_con(namuwiki_run["cfg"].warehouse_dir)
    try:
        flat = """
            SELECT r.query_id, r.doc_id AS pos_doc, lower(d.title) AS pos_title, r.role, r.passage_id,
                   p.doc_id AS neg_doc, lower(p.title) AS neg_title
            FROM (SELECT query_id, doc_id, unnest(roles) AS role, unnest(passage_ids) AS passage_id
                  FROM examples) r
            JOIN documents d ON d.doc_id = r.doc_id
            JOIN passages p ON p.passage_id = r.passage_id
        """
        n_negs, same_doc, same_title, pos_ok = con.execute(f"""
            SELECT count(*) FILTER (WHERE role <> 'positive'),
                   count(*) FILTER (WHERE role <> 'positive' AND neg_doc = pos_doc),
                   count(*) FILTER (WHERE role <> 'positive' AND neg_title = pos_title),
                   bool_and(neg_doc = pos_doc) FILTER (WHERE role = 'positive')
            FROM ({flat})""").fetchall()[0]
        removed = con.execute(
            "SELECT count(*) FROM candidates WHERE filter_reason = 'same_document'").fetchall()[0][0]
    finally:
        con.close()
    assert n_negs > 0
    assert same_doc == 0
    assert same_title == 0
    assert pos_ok  # and the positive does come from its own document
    assert removed > 0  # long documents put their own passages among the neighbours


def test_filter_counts_are_in_metadata(namuwiki_run):
    export_dir = namuwiki_run["cfg"].export_dir
    meta = json.loads((export_dir / "metadata.json").read_text(encoding="utf-8"))
    con = layers_con(namuwiki_run["cfg"].warehouse_dir)
    try:
        expected = dict(con.execute("""
            SELECT filter_reason, count(*) FROM (
                SELECT filter_reason FROM candidates UNION ALL SELECT filter_reason FROM scored_candidates)
            WHERE filter_reason IS NOT NULL GROUP BY 1""").fetchall())
    finally:
        con.close()
    assert meta["candidate_filters"] == expected
    assert meta["candidate_filters"].get("same_document", 0) > 0


def test_namuwiki_export_loads_in_the_trainer(namuwiki_run):
    seen = check_trainer_view(namuwiki_run["cfg"].export_dir, namuwiki_run["meta"])
    assert sum(seen.values()) == namuwiki_run["meta"]["total_queries"] > 0

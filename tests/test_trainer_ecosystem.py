"""The trainers' ecosystem: the dataset card, the sentence-transformers sparse format (and a real
SparseEncoder training run on it), first_rank, idf.json and ``publish``.

One in-process run (tiny random embedder, 40 synthetic articles in two sources of different
licenses) with every optional output on is shared by the module.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from etl_helpers import TINY_SETTINGS, make_articles, make_run_dirs, merge_settings, write_jsonl

from etl import card
from etl.config import load_config
from etl.pipeline import run_pipeline

WIKI, NAMU = "cc-by-sa-4.0", "cc-by-nc-sa-2.0-kr"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("eco_corpus")
    arts = make_articles(40, seed=3, sentences=12)
    write_jsonl(root / "wiki" / "a.jsonl", arts[:24])
    write_jsonl(root / "namu" / "b.jsonl", arts[24:])
    return root


def make_dirs(root: Path, corpus: Path, model: str, licenses=(WIKI, NAMU), export=None):
    sources = [("wikipedia_ko", [str(corpus / "wiki" / "*.jsonl")], {"license": licenses[0]} if licenses[0] else {}),
               ("namuwiki", [str(corpus / "namu" / "*.jsonl")], {"license": licenses[1]} if licenses[1] else {})]
    return make_run_dirs(root, sources, model=model, settings=merge_settings(TINY_SETTINGS, {"export": export or {}}))


def word_tokenizer(out: Path, words: list[str]) -> Path:
    """A word-level tokenizer (whitespace split; unknown words -> [UNK]) saved as a transformers tokenizer."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]"]
    vocab = {w: i for i, w in enumerate(specials + words)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2),
                                                                                                ("[SEP]", 3)])
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                            sep_token="[SEP]").save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def corpus_tokenizer(tmp_path_factory) -> Path:
    """A word-level tokenizer over the corpus's words (split on spaces, punctuation kept on the word)."""
    words = sorted({w for a in make_articles(40, seed=3, sentences=12) for w in a["text"].split()})
    return word_tokenizer(tmp_path_factory.mktemp("corpus_tok"), words)


@pytest.fixture(scope="module")
def eco_run(tmp_path_factory, tiny_model, corpus, corpus_tokenizer):
    dirs = make_dirs(tmp_path_factory.mktemp("eco_run"), corpus, tiny_model,
                     export={"first_rank": True, "idf_tokenizer": str(corpus_tokenizer)})
    meta = run_pipeline(load_config(dirs.config), log=lambda _: None)
    assert meta["total_queries"] > 0 and meta["val_samples"] > 0
    yield dirs
    dirs.close()


# ---- the dataset card ---------------------------------------------------------------------------

def test_card_front_matter(eco_run):
    text = (eco_run.export / "README.md").read_text(encoding="utf-8")
    fm = card.parse_front_matter(text)
    meta = eco_run.metadata
    assert fm["language"] == ["ko"]
    # mixed sources: the most restrictive (Namuwiki's NC-SA 2.0 KR), named as an "other" license
    assert fm["license"] == "other" and fm["license_name"] == NAMU
    assert fm["license_link"] == "https://creativecommons.org/licenses/by-nc-sa/2.0/kr/"
    assert fm["task_categories"] == ["text-retrieval"]
    assert fm["size_categories"] == ["n<1K"]
    assert fm["source_datasets"] == ["wikipedia_ko", "namuwiki"]
    default = fm["configs"][0]
    assert default["config_name"] == "default"
    assert default["data_files"] == [{"split": "train", "path": "train.jsonl"},
                                     {"split": "validation", "path": "val.jsonl"}]
    for f in default["data_files"]:
        assert (eco_run.export / f["path"]).is_file()
    assert [f["name"] for f in fm["dataset_info"]["features"]] == ["query", "docs", "scores", "first_rank"]
    assert fm["dataset_info"]["splits"] == [{"name": "train", "num_examples": meta["train_samples"]},
                                            {"name": "validation", "num_examples": meta["val_samples"]}]
    assert meta["card"] == str(eco_run.export / "README.md")


def test_card_body_says_what_and_how(eco_run):
    text = (eco_run.export / "README.md").read_text(encoding="utf-8")
    meta = eco_run.metadata
    assert "different licenses" in text and f"**{NAMU}**" in text
    assert f"| records | {meta['total_queries']:,} |" in text
    for name in ("scores_by_role.png", "docs_per_query.png"):
        assert f"](report/{name})" in text and (eco_run.export / "report" / name).is_file()
    assert "## Generation settings" in text and "run_pipeline" in text  # called from Python here
    assert "| in_neighbours |" in text and card.FILTER_MEANINGS["in_neighbours"] in text
    assert f"{meta['docs_per_query']} passages, the positive first" in text


def test_license_choice():
    assert card.most_restrictive([WIKI, NAMU]) == NAMU
    assert card.most_restrictive([WIKI, WIKI]) == WIKI
    assert card.most_restrictive(["cc0-1.0", "cc-by-4.0"]) == "cc-by-4.0"
    assert card.most_restrictive(["cc-by-nc-sa-4.0", "cc-by-nd-4.0"]) == "cc-by-nd-4.0"
    assert card.most_restrictive([WIKI, ""]) == "unknown"
    assert card.license_front_matter(WIKI) == {"license": WIKI}
    assert card.license_front_matter("unknown") == {"license": "unknown"}


def test_size_categories():
    assert [card.size_category(n) for n in (0, 999, 1000, 250_000, 3_000_000)] == \
        ["n<1K", "n<1K", "1K<n<10K", "100K<n<1M", "1M<n<10M"]


def test_invocation_uses_the_typed_name():
    assert card.invocation(["/x/etl/__main__.py", "run", "--config", "my config.toml"]) == \
        "python -m etl run --config 'my config.toml'"
    assert card.invocation(["/venv/bin/ko-sparse-etl", "run"]) == "ko-sparse-etl run"


def test_license_is_not_part_of_the_stage_fingerprints(tmp_path, tiny_model, corpus):
    from etl.pipeline import Context, planned_fingerprints
    from etl.warehouse import Warehouse

    fps = []
    for i, lic in enumerate([(WIKI, NAMU), ("mit", "")]):
        d = make_dirs(tmp_path / str(i), corpus, tiny_model, licenses=lic)
        cfg = load_config(d.config, [f"paths.warehouse='{tmp_path / 'wh'}'", f"paths.export='{tmp_path / 'out'}'"])
        wh = Warehouse(cfg)
        try:
            fps.append(planned_fingerprints(Context(cfg, wh)))
        finally:
            wh.close()
    export_fps = [fp.pop("export") for fp in fps]
    assert fps[0] == fps[1]  # no stage re-runs for a new license
    assert export_fps[0] != export_fps[1]  # the export does: its card states the license


# ---- the sentence-transformers sparse format --------------------------------------------------

def test_st_splits_have_the_sparse_encoder_columns(eco_run):
    import datasets

    meta = eco_run.metadata
    n = meta["docs_per_query"]
    cols = ["query", "positive", *(f"negative_{i}" for i in range(1, n)), "label"]
    records = {"train": (eco_run.export / "train.jsonl"), "validation": (eco_run.export / "val.jsonl")}
    for split, jsonl in records.items():
        ds = datasets.load_from_disk(str(eco_run.export / "st" / split))
        assert ds.column_names == cols
        lines = [json.loads(x) for x in jsonl.read_text(encoding="utf-8").splitlines()]
        assert ds.num_rows == len(lines) == meta["st"]["splits"][split]["rows"]
        for row, rec in zip(ds, lines, strict=True):
            assert row["query"] == rec["query"]
            assert [row["positive"], *(row[f"negative_{i}"] for i in range(1, n))] == rec["docs"]
            assert row["label"] == rec["scores"]
    fm = card.parse_front_matter((eco_run.export / "README.md").read_text(encoding="utf-8"))
    st_config = next(c for c in fm["configs"] if c["config_name"] == "sentence-transformers")
    assert [f["split"] for f in st_config["data_files"]] == ["train", "validation"]
    assert list((eco_run.export / "st" / "train").glob("*.arrow"))


def build_inference_free_encoder(root: Path):
    """A tiny inference-free SPLADE model: a static token-weight table for queries, a 2-layer BERT MLM +
    SPLADE max pooling for documents, over a WordPiece tokenizer trained here."""
    import torch
    from sentence_transformers.sparse_encoder import SparseEncoder

    try:  # sentence-transformers 6 moved the modules; 5.x has them under .models
        from sentence_transformers.sentence_transformer.modules import Router
        from sentence_transformers.sparse_encoder.modules import MLMTransformer, SparseStaticEmbedding, SpladePooling
    except ImportError:
        from sentence_transformers.models import Router
        from sentence_transformers.sparse_encoder.models import MLMTransformer, SparseStaticEmbedding, SpladePooling
    from etl_helpers import tokenizer_training_text
    from tiny_models import bert_config, build_tokenizer
    from transformers import AutoTokenizer, BertForMaskedLM

    hf_dir = root / "mlm"
    tok = build_tokenizer(hf_dir, tokenizer_training_text())
    torch.manual_seed(0)
    BertForMaskedLM(bert_config(tok.get_vocab_size())).save_pretrained(hf_dir)
    doc = [MLMTransformer(str(hf_dir), max_seq_length=64), SpladePooling(pooling_strategy="max")]
    query = [SparseStaticEmbedding(tokenizer=AutoTokenizer.from_pretrained(hf_dir), frozen=False)]
    model = SparseEncoder(modules=[Router.for_query_document(query_modules=query, document_modules=doc)],
                          device="cpu")
    return model, tok.get_vocab_size()


def test_sparse_encoder_trains_on_the_st_export(eco_run, tmp_path):
    import datasets
    from sentence_transformers.sparse_encoder import SparseEncoderTrainer, SparseEncoderTrainingArguments, losses

    train = datasets.load_from_disk(str(eco_run.export / "st" / "train")).select(range(16))
    model, vocab = build_inference_free_encoder(tmp_path)
    loss = losses.SpladeLoss(model, loss=losses.SparseDistillKLDivLoss(model),
                             document_regularizer_weight=3e-5, query_regularizer_weight=0)
    docs_cols = [c for c in train.column_names if c not in ("query", "label")]
    args = SparseEncoderTrainingArguments(
        output_dir=str(tmp_path / "out"), max_steps=3, per_device_train_batch_size=4, learning_rate=1e-3,
        logging_steps=1, save_strategy="no", report_to=[], use_cpu=True, seed=0,
        router_mapping={"query": "query", **dict.fromkeys(docs_cols, "document")})
    trainer = SparseEncoderTrainer(model=model, args=args, train_dataset=train, loss=loss)
    result = trainer.train()
    losses_logged = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert result.global_step == 3 and len(losses_logged) == 3
    assert all(math.isfinite(v) for v in losses_logged)
    emb = model.encode_query(["서울 항구"], convert_to_tensor=True)
    dim = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
    assert emb.shape[-1] == dim() == vocab  # one weight per token of the tokenizer


# ---- first_rank and idf.json --------------------------------------------------------------------

def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines()]


def test_first_rank_is_the_positives_rank(eco_run):
    import datasets

    records = read_jsonl(eco_run.export / "train.jsonl") + read_jsonl(eco_run.export / "val.jsonl")
    assert all(list(r) == ["query", "docs", "scores", "first_rank"] for r in records)
    ranks = dict(eco_run.q("SELECT query_id, positive_rank FROM candidates WHERE role = 'positive'"))
    ids = [r[0] for r in eco_run.q("SELECT query_id FROM examples ORDER BY split = 'val', query_id")]
    assert [r["first_rank"] for r in records] == [ranks[i] for i in ids]
    assert min(ranks[i] for i in ids) == 1 and all(1 <= ranks[i] <= 61 for i in ids)
    assert len({ranks[i] for i in ids}) > 1  # the tiny model does not always rank the positive first
    ds = datasets.load_from_disk(str(eco_run.export / "datasets" / "train"))
    train = read_jsonl(eco_run.export / "train.jsonl")
    assert ds.features["first_rank"].dtype == "int64" and ds["first_rank"] == [r["first_rank"] for r in train]


def test_first_rank_off_leaves_the_records_as_they_were(eco_run, tmp_path):
    """With first_rank off (the default) the same records are written without the key."""
    with_rank = read_jsonl(eco_run.export / "train.jsonl")
    cfg = load_config(eco_run.config, ["export.first_rank=false", "export.idf_tokenizer=''",
                                       f"paths.export='{tmp_path / 'out'}'"])
    run_pipeline(cfg, log=lambda _: None)
    plain = (tmp_path / "out" / "train.jsonl").read_text(encoding="utf-8").splitlines()
    assert [json.loads(x) for x in plain] == [{k: v for k, v in r.items() if k != "first_rank"} for r in with_rank]
    assert plain[0].startswith('{"query":') and '"first_rank"' not in plain[0]
    assert not (tmp_path / "out" / "idf.json").exists()


def test_idf_hand_computed(tmp_path):
    from etl.idf import compute_idf, load_tokenizer

    tok = load_tokenizer(str(word_tokenizer(tmp_path / "tok", ["사과", "배", "포도", "수박"])))
    docs = ["사과 배", "사과 사과 포도", "배 바나나 [CLS]"]  # 바나나: [UNK]; [CLS] is special: both left out
    table, n = compute_idf(tok, [docs[:2], docs[2:]])
    assert n == 3
    # N = 3; df(사과) = df(배) = 2 (사과 twice in one passage counts once), df(포도) = 1, 수박 never
    assert table == {"배": pytest.approx(math.log(1 + 1.5 / 2.5)), "사과": pytest.approx(math.log(1.6)),
                     "포도": pytest.approx(math.log(1 + 2.5 / 1.5))}


def test_idf_json_of_the_run(eco_run, corpus_tokenizer):
    from etl.idf import compute_idf, load_tokenizer

    table = json.loads((eco_run.export / "idf.json").read_text(encoding="utf-8"))
    texts = [r[0] for r in eco_run.q("SELECT text FROM passages ORDER BY passage_id")]
    expected, n = compute_idf(load_tokenizer(str(corpus_tokenizer)), [texts])
    assert table == pytest.approx(expected) and len(table) > 50
    assert not {"[CLS]", "[SEP]", "[PAD]", "[UNK]"} & table.keys()
    assert eco_run.metadata["idf"]["passages"] == n == len(texts)
    word, common = max(table, key=table.get), min(table, key=table.get)
    df = lambda w: sum(w in t.split() for t in texts)  # noqa: E731
    assert df(word) < df(common)


def test_bad_idf_tokenizer_is_a_clear_error(eco_run, tmp_path):
    cfg = load_config(eco_run.config, [f"export.idf_tokenizer='{tmp_path / 'nothing'}'",
                                       f"paths.export='{tmp_path / 'out'}'"])
    with pytest.raises(RuntimeError, match="export.idf_tokenizer = .*cannot load a tokenizer"):
        run_pipeline(cfg, log=lambda _: None)


# ---- publish ------------------------------------------------------------------------------------

def test_publish_sends_the_card_and_splits_never_embeddings(eco_run, monkeypatch):
    """Nothing can reach a hub here: HfApi is replaced, and the folder it is handed is checked."""
    import huggingface_hub

    from etl import publish as publish_mod

    calls: dict = {}

    class FakeApi:
        def create_repo(self, **kw):
            calls["create"] = kw

        def upload_folder(self, *, folder_path, **kw):
            root = Path(folder_path)
            calls["upload"] = kw
            calls["files"] = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())
            calls["card"] = (root / "README.md").read_text(encoding="utf-8")
            calls["train"] = (root / "train.jsonl").read_bytes()
            return type("Info", (), {"commit_url": "https://hub.invalid/commit/1"})()

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    result = publish_mod.publish(eco_run.export, "someone/ko-sparse", private=True, log=lambda _: None)
    assert calls["create"] == {"repo_id": "someone/ko-sparse", "repo_type": "dataset", "private": True,
                               "exist_ok": True}
    assert calls["upload"]["repo_id"] == "someone/ko-sparse" and calls["upload"]["repo_type"] == "dataset"
    files = calls["files"]
    assert {"README.md", "train.jsonl", "val.jsonl", "idf.json", "report/report.md"} <= set(files)
    assert any(f.startswith("st/train/") and f.endswith(".arrow") for f in files)
    assert not [f for f in files if f.startswith(("embeddings/", "datasets/")) or f == "metadata.json"]
    assert calls["card"] == (eco_run.export / "README.md").read_text(encoding="utf-8")
    assert calls["train"] == (eco_run.export / "train.jsonl").read_bytes()
    assert result["files"] == files and result["commit"].endswith("/commit/1")
    assert not list(eco_run.export.parent.glob(".export.publish.*"))  # the staged folder is gone


def test_publish_refuses_an_export_without_a_card(tmp_path):
    from etl.publish import PublishError, files_to_publish

    (tmp_path / "train.jsonl").write_text("{}\n", encoding="utf-8")
    with pytest.raises(PublishError, match="has no README.md"):
        files_to_publish(tmp_path)


def test_publish_without_the_package_names_the_extra(eco_run, monkeypatch):
    import builtins

    from etl.publish import PublishError, publish

    real_import = builtins.__import__

    def no_hub(name, *a, **kw):
        if name == "huggingface_hub":
            raise ImportError(name)
        return real_import(name, *a, **kw)

    monkeypatch.setattr(builtins, "__import__", no_hub)
    with pytest.raises(PublishError, match=r"pip install 'ko-sparse-etl\[publish\]'"):
        publish(eco_run.export, "x/y", log=lambda _: None)


def test_publish_dry_run_lists_the_files(eco_run):
    from etl_helpers import run_cli

    res = run_cli(["publish", "--config", str(eco_run.config), "--repo", "x/y", "--dry-run"])
    assert res.returncode == 0, res.stderr
    assert "  README.md" in res.stdout and "  train.jsonl" in res.stdout and "embeddings" not in res.stdout

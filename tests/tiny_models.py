"""Tiny models built in the tests: a WordPiece tokenizer, a bag-of-tokens sentence-transformers
embedder and a random CrossEncoder, all trained/initialized here in seconds.

Shared by test_report.py, test_trainer_compat.py and test_teacher.py (imported as ``tiny_models``,
like ``etl_helpers``). torch, tokenizers, transformers and sentence-transformers are imported
inside the functions, so importing this module costs nothing when those tests are skipped.

The embedder is a 2-layer BERT (hidden 32) whose attention and feed-forward outputs are zeroed, so
each embedding is the mean of (LayerNorm'd) random token vectors: a bag-of-tokens projection that
ranks lexically similar passages close together.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from etl.config import SAMPLE_DIR

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
KO_SENTENCES = [
    "서울특별시는 대한민국의 수도이자 최대 도시이다.", "세종은 훈민정음을 창제하였다.",
    "블랙홀은 중력이 매우 강한 천체이다.", "라면은 국수를 끓는 물에 삶아 먹는 음식이다.",
    "임진왜란은 1592년에 일어난 전쟁이다.", "은하수는 밤하늘을 가로지르는 빛의 띠이다.",
    "query: passage: 질문 문서",
]
HIDDEN = 32
MAX_LEN = 128


def sample_texts() -> list[str]:
    """Every ``text`` field of the bundled sample corpus (``*.json`` and ``*.jsonl``, bad lines skipped)."""
    texts: list[str] = []
    for path in sorted(SAMPLE_DIR.rglob("*.json*")):
        raw = path.read_text(encoding="utf-8")
        records = json.loads(raw) if path.suffix == ".json" else []
        if path.suffix == ".jsonl":
            for line in raw.splitlines():
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError:
                    continue
        texts += [r["text"] for r in records if isinstance(r, dict) and isinstance(r.get("text"), str)]
    return texts


def build_tokenizer(hf_dir: Path, extra_texts: Sequence[str] = KO_SENTENCES) -> Any:
    """Train a WordPiece tokenizer (vocab 1000) on ``extra_texts`` + the sample corpus.

    Saves it as a ``PreTrainedTokenizerFast`` in ``hf_dir`` and returns the ``tokenizers.Tokenizer``.
    """
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.train_from_iterator(list(extra_texts) + sample_texts(),
                            trainers.WordPieceTrainer(vocab_size=1000, special_tokens=SPECIALS))
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", tok.token_to_id("[CLS]")), ("[SEP]", tok.token_to_id("[SEP]"))])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                                   sep_token="[SEP]", mask_token="[MASK]", model_max_length=MAX_LEN)
    fast.save_pretrained(hf_dir)
    return tok


def bert_config(vocab: int, **extra: Any) -> Any:
    """The tiny ``BertConfig``: 2 layers, hidden 32, 2 heads, FFN 64, 128 positions (+ ``extra``)."""
    from transformers import BertConfig

    return BertConfig(vocab_size=vocab, hidden_size=HIDDEN, num_hidden_layers=2, num_attention_heads=2,
                      intermediate_size=64, max_position_embeddings=MAX_LEN, **extra)


def build_tiny_embedder(out_dir: Path, extra_texts: Sequence[str] = KO_SENTENCES) -> Path:
    """Bag-of-tokens sentence-transformers model: WordPiece trained here + a 2-layer BERT, hidden 32.

    The HF model goes to ``out_dir / "hf"``, the sentence-transformers model (mean pooling) to
    ``out_dir / "st"``, which is returned. ``extra_texts`` are added to the tokenizer's training text.
    """
    import torch
    from sentence_transformers import SentenceTransformer
    from transformers import BertModel

    try:
        from sentence_transformers.sentence_transformer.modules import Pooling, Transformer
    except ImportError:  # sentence-transformers < 6
        from sentence_transformers.models import Pooling, Transformer

    hf_dir = out_dir / "hf"
    tok = build_tokenizer(hf_dir, extra_texts)
    torch.manual_seed(0)
    bert = BertModel(bert_config(tok.get_vocab_size()))
    with torch.no_grad():  # residual-only layers: embedding = mean of LayerNorm(token vector)
        bert.embeddings.word_embeddings.weight.normal_(0.0, 1.0)
        for special in SPECIALS:
            bert.embeddings.word_embeddings.weight[tok.token_to_id(special)].zero_()
        bert.embeddings.position_embeddings.weight.zero_()
        bert.embeddings.token_type_embeddings.weight.zero_()
        for layer in bert.encoder.layer:
            for dense in (layer.attention.output.dense, layer.output.dense):
                dense.weight.zero_()
                dense.bias.zero_()
    bert.save_pretrained(hf_dir)
    st_dir = out_dir / "st"
    SentenceTransformer(modules=[Transformer(str(hf_dir), max_seq_length=MAX_LEN), Pooling(HIDDEN, "mean")],
                        device="cpu").save(str(st_dir))
    return st_dir


def build_tiny_cross_encoder(out_dir: Path, extra_texts: Sequence[str] = KO_SENTENCES) -> Path:
    """A random BertForSequenceClassification (num_labels=1) + tokenizer: loads as CrossEncoder(path).

    ``initializer_range=0.2`` (instead of 0.02) so that its scores actually differ between pairs.
    """
    import torch
    from transformers import BertForSequenceClassification

    tok = build_tokenizer(out_dir, extra_texts)
    torch.manual_seed(1)
    model = BertForSequenceClassification(bert_config(tok.get_vocab_size(), num_labels=1, initializer_range=0.2))
    model.save_pretrained(out_dir)
    return out_dir

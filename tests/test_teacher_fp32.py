"""Exact teacher scores: the cross-encoder scores in float32 unless teacher.fp16 on CUDA, and the
score cache keeps float32 and float16 scores apart."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
from tiny_models import build_tiny_cross_encoder

from etl import teacher
from etl.config import TeacherConfig, load_config


def test_default_teacher_precision_is_float32():
    t = load_config().teacher
    assert t.fp16 is False and teacher.score_dtype(t) == "float32"


def test_cross_encoder_checkpoint_saved_in_half_precision_scores_in_float32(tmp_path):
    import torch
    from sentence_transformers import CrossEncoder

    half = CrossEncoder(str(build_tiny_cross_encoder(tmp_path / "ce")), device="cpu")
    half.model.half()
    half.save(str(tmp_path / "ce16"))  # a checkpoint stored in fp16 (config torch_dtype float16)
    teacher._MODELS.clear()
    model = teacher.load_cross_encoder(str(tmp_path / "ce16"), "cpu", fp16=False)
    assert {p.dtype for p in model.model.parameters()} == {torch.float32}
    scores = np.asarray(model.predict([("질문", "문서 본문"), ("질문", "다른 문서")], show_progress_bar=False))
    assert scores.dtype == np.float32 and np.isfinite(scores).all()
    teacher._MODELS.clear()


def test_score_cache_key_names_the_precision():
    t = TeacherConfig(kind="cross_encoder", cross_encoder="m", device="cuda", fp16=True)
    assert teacher.score_dtype(t) == "float16"
    fp32 = replace(t, fp16=False)
    assert "dtype=float16" in teacher.cache_key_prefix(t) and "dtype=float32" in teacher.cache_key_prefix(fp32)
    assert teacher.pair_hashes(t, "q", "d") != teacher.pair_hashes(fp32, "q", "d")
    # fp16 on a CPU device is ignored: the scores, and so the keys, are float32 ones
    assert teacher.cache_key_prefix(replace(t, device="cpu")) == teacher.cache_key_prefix(replace(fp32, device="cpu"))

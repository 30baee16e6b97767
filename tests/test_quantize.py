"""Int8 with outlier channels kept out of it: the graph rewrite computes the same function, on every
tiny family (bi- and cross-encoders); int8 exports of both kinds pass their parity checks."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from tiny_models import CORPUS, CROSS_ENCODER_FAMILIES, FAMILIES, build_cross_encoder

pytest.importorskip("optimum.exporters.onnx", reason="needs the export extra: pip install '.[export]'")

from fastmarco.model.quantize import (
    OutlierPlan,
    keep_outliers_out,
    outlier_channels,
    tokenized_batches,
)


def run_graph(model: object, feeds: list[dict[str, np.ndarray]]) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])  # type: ignore[attr-defined]
    names = {i.name for i in session.get_inputs()}
    outputs = [session.run(None, {k: v for k, v in f.items() if k in names})[0] for f in feeds]
    return np.concatenate(outputs)


def rewrite_is_exact(
    onnx_path: Path, feeds: list[dict[str, np.ndarray]], factor: float, ops: tuple[str, ...] = ("MatMul",)
) -> OutlierPlan:
    """Rewrite the graph at ONNX_PATH and check it still computes the same outputs on FEEDS."""
    import onnx

    original = onnx.load(str(onnx_path))
    rewritten = onnx.load(str(onnx_path))
    plan = keep_outliers_out(rewritten, feeds, factor, ops)
    onnx.checker.check_model(rewritten)
    np.testing.assert_allclose(run_graph(rewritten, feeds), run_graph(original, feeds), rtol=1e-4, atol=1e-5)
    return plan


def test_outlier_channels_are_the_ones_far_above_the_rest() -> None:
    maxima = np.full(500, 2.0)
    maxima[[7, 150]] = [30.0, 3.5]  # the 99th percentile stays 2.0
    maxima[10] = 2.9  # above the others but within 1.5x of the 99th percentile
    assert outlier_channels(maxima).tolist() == [7, 150]
    assert outlier_channels(np.full(64, 1.0)).size == 0


@pytest.mark.parametrize("family", FAMILIES)
def test_the_rewrite_is_exact_on_every_bi_encoder_family(
    family: str, tiny: dict[str, Path], exported: dict[tuple[str, str], Path]
) -> None:
    from sentence_transformers import SentenceTransformer

    tokenizer = SentenceTransformer(str(tiny[family]), device="cpu").tokenizer
    feeds = tokenized_batches(tokenizer, [*CORPUS, " ".join(CORPUS) * 4, ""], 48, batch=3)
    # a low factor marks many channels (random weights have no real outliers): both rewrites run
    plan = rewrite_is_exact(exported[family, "fp32"] / "model.onnx", feeds, factor=0.9)
    assert plan.split and plan.scaled
    assert len(plan.fp32_nodes) == 2 * len(plan.split)
    with_attention = rewrite_is_exact(
        exported[family, "fp32"] / "model.onnx", feeds, 0.9, ("MatMul", "Attention")
    )
    assert any(name.startswith("Attention") for name in with_attention.scaled)


@pytest.mark.parametrize("family", CROSS_ENCODER_FAMILIES)
def test_int8_cross_encoders_rewrite_exactly_and_pass_their_parity_check(family: str, tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    from fastmarco.model.export import export_model

    folder = build_cross_encoder(family, tmp_path / family)
    export_model(str(folder), tmp_path / "fp32")
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    feeds = tokenized_batches(tokenizer, list(CORPUS), 48, list(reversed(CORPUS)), batch=2)
    assert set(feeds[0]) >= {"input_ids", "attention_mask"}
    plan = rewrite_is_exact(tmp_path / "fp32" / "model.onnx", feeds, factor=0.9)
    assert plan.split or plan.scaled
    attention = family == "electra-cross-encoder"  # one family each way
    export_model(str(folder), tmp_path / "int8", int8=True, int8_attention=attention)  # refused past 5e-2
    quantization = json.loads((tmp_path / "int8" / "fastmarco.json").read_text())["quantization"]
    assert quantization["method"] == "onnxruntime dynamic, outlier channels kept in fp32"
    assert quantization["quantized_ops"] == (["MatMul", "Attention"] if attention else ["MatMul"])
    assert quantization["calibration_batches"] == 40  # 8 demo queries x 40 demo passages, 8 pairs a batch


def test_int8_attention_needs_int8(tmp_path: Path) -> None:
    from fastmarco.errors import ExportError
    from fastmarco.model.export import export_model

    with pytest.raises(ExportError, match=r"int8_attention .* add int8"):
        export_model("any-model", tmp_path / "out", int8_attention=True)
    assert not (tmp_path / "out").exists()

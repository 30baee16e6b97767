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
    # ANCE's Dense reads the first token's row (one per text): fp32 whole; the side paths two MatMuls each
    assert plan.one_row == (["/2/linear/Gemm"] if "cls-dense" in family else [])
    assert len(plan.fp32_nodes) == 2 * len(plan.split) + len(plan.one_row)
    with_attention = rewrite_is_exact(
        exported[family, "fp32"] / "model.onnx", feeds, 0.9, ("MatMul", "Attention")
    )
    assert any(name.startswith("Attention") for name in with_attention.scaled)


@pytest.mark.parametrize("family", CROSS_ENCODER_FAMILIES)
def test_int8_cross_encoders_rewrite_exactly_and_pass_their_parity_check(family: str, tmp_path: Path) -> None:
    import onnx
    from transformers import AutoTokenizer

    from fastmarco.model.export import export_model

    folder = build_cross_encoder(family, tmp_path / family)
    export_model(str(folder), tmp_path / "fp32")
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    feeds = tokenized_batches(tokenizer, list(CORPUS), 48, list(reversed(CORPUS)), batch=2)
    assert set(feeds[0]) >= {"input_ids", "attention_mask"}
    plan = rewrite_is_exact(tmp_path / "fp32" / "model.onnx", feeds, factor=0.9)
    assert plan.split or plan.scaled
    # over the first token's row: the last layer's query, attention output and feed-forward in and out,
    # and the head's two Gemms
    assert len(plan.one_row) == 6 and sum(name.endswith("Gemm") for name in plan.one_row) == 2
    assert not set(plan.one_row) & {*plan.split, *plan.scaled}
    attention = family == "electra-cross-encoder"  # one family each way
    export_model(str(folder), tmp_path / "int8", int8=True, int8_attention=attention)  # refused past 5e-2
    quantization = json.loads((tmp_path / "int8" / "fastmarco.json").read_text())["quantization"]
    assert quantization["method"] == "onnxruntime dynamic, outlier channels kept in fp32"
    assert quantization["quantized_ops"] == (["MatMul", "Attention"] if attention else ["MatMul"])
    assert quantization["calibration_batches"] == 40  # 8 demo queries x 40 demo passages, 8 pairs a batch
    assert quantization["fp32_one_row"] == plan.one_row  # found by shape, whatever the family names them
    int8_graph = onnx.load(str(tmp_path / "int8" / "model.onnx")).graph
    float_products = {node.name for node in int8_graph.node if node.op_type == "MatMul"}
    assert all({name, f"{name}_MatMul"} & float_products for name in plan.one_row)
    integer = [node.name for node in int8_graph.node if node.op_type in ("MatMulInteger", "QAttention")]
    assert integer and not [name for name in integer if name.startswith(tuple(plan.one_row))]
    # the last layer computes the first token's row alone (last_layer_for_the_first_token): one fused
    fused = json.loads((tmp_path / "int8" / "fastmarco.json").read_text())["fusions"]
    assert fused["Attention"] == 1  # attention in the tiny models' two layers


def test_int8_attention_needs_int8(tmp_path: Path) -> None:
    from fastmarco.errors import ExportError
    from fastmarco.model.export import export_model

    with pytest.raises(ExportError, match=r"int8_attention .* add int8"):
        export_model("any-model", tmp_path / "out", int8_attention=True)
    assert not (tmp_path / "out").exists()


def write_corpus(path: Path, texts: list[str]) -> Path:
    path.write_text("".join(f"p{i}\t{text}\n" for i, text in enumerate(texts)), encoding="utf-8")
    return path


def test_calibration_passages_spread_through_the_head_of_the_corpus(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fastmarco.errors import ExportError, FormatError
    from fastmarco.model import export_steps

    corpus = write_corpus(tmp_path / "corpus.tsv", [f"passage {i}" for i in range(100)])
    monkeypatch.setattr(export_steps, "CALIBRATION_SCAN", 10)
    monkeypatch.setattr(export_steps, "CALIBRATION_PASSAGES", 4)
    chosen = export_steps.calibration_passages(corpus)
    assert chosen == ["passage 0", "passage 2", "passage 5", "passage 7"]
    assert export_steps.calibration_passages(corpus) == chosen  # deterministic
    short = write_corpus(tmp_path / "short.tsv", ["only one"])
    assert export_steps.calibration_passages(short) == ["only one"]
    (tmp_path / "empty.tsv").write_text("")
    with pytest.raises(ExportError, match=r"empty\.tsv: no passages to calibrate on"):
        export_steps.calibration_passages(tmp_path / "empty.tsv")
    (tmp_path / "bad.tsv").write_text("p0\tfine\nno tab on this line\n")
    with pytest.raises(FormatError, match=r"bad\.tsv:2: "):
        export_steps.calibration_passages(tmp_path / "bad.tsv")


def test_int8_calibrates_on_a_corpus_file(tiny: dict[str, Path], tmp_path: Path) -> None:
    """The passages reach the quantizer (its batch count follows them) and the manifest says so; both
    kinds. Without a file, the bundled demo texts."""
    from fastmarco.model.export import export_model

    corpus = write_corpus(tmp_path / "corpus.tsv", [*CORPUS, *CORPUS, *CORPUS])
    cross = build_cross_encoder(CROSS_ENCODER_FAMILIES[0], tmp_path / "cross-source")
    # 8 a batch: the bi-encoder's 18 passages and the 8 demo queries, the cross-encoder's 18 pairs
    for name, folder, batches in [("bi", tiny[FAMILIES[0]], 4), ("cross", cross, 3)]:
        export_model(str(folder), tmp_path / name, int8=True, calibration=corpus)
        quantization = json.loads((tmp_path / name / "fastmarco.json").read_text())["quantization"]
        assert quantization["calibration_batches"] == batches, name
        assert quantization["calibrated_on"] == f"18 passages of {corpus}", name
    export_model(str(tiny[FAMILIES[0]]), tmp_path / "demo", int8=True)
    quantization = json.loads((tmp_path / "demo" / "fastmarco.json").read_text())["quantization"]
    assert quantization["calibrated_on"] == "the bundled demo texts"
    assert quantization["calibration_batches"] == 6  # 40 demo passages and 8 queries


def test_calibration_needs_an_int8_export(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from fastmarco.cli import main
    from fastmarco.errors import ExportError
    from fastmarco.model.export import export_model

    corpus = write_corpus(tmp_path / "corpus.tsv", list(CORPUS))
    with pytest.raises(ExportError, match=r"calibration \(--calibration\) .* fp32 export .* add int8"):
        export_model("any-model", tmp_path / "out", calibration=corpus)
    result = CliRunner().invoke(
        main, ["export", "any-model", "--out", str(tmp_path / "out"), "--calibration", str(corpus)]
    )
    assert result.exit_code != 0 and "add int8" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "out").exists()

"""Cross-encoders: export parity with sentence-transformers' CrossEncoder.predict, the batching of
CrossEncoderScorer, and `fastmarco rerank` with a cross-encoder directory."""

from __future__ import annotations

import json
from itertools import product
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from tiny_models import CORPUS, CROSS_ENCODER_FAMILIES, build_cross_encoder

from fastmarco.cli import main
from fastmarco.errors import ExportError, InputError, ModelError
from fastmarco.model.cross_encoder import CrossEncoderScorer
from fastmarco.model.encoder import Encoder
from fastmarco.model.scorer import BiEncoderScorer, open_scorer
from fastmarco.progress import Update
from fastmarco.store.passages import PassageStore

pytest.importorskip("optimum.exporters.onnx", reason="needs the export extra: pip install '.[export]'")

LONG = " ".join(CORPUS) * 3  # longer than max_seq_length 48: both sides get truncated, longest first
QUERIES = [q for q, _ in product([*CORPUS, LONG, ""], [*CORPUS, LONG, ""])]
PASSAGES = [p for _, p in product([*CORPUS, LONG, ""], [*CORPUS, LONG, ""])]


@pytest.fixture(scope="module")
def cross_encoders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("cross-encoders")
    return {family: build_cross_encoder(family, root / family) for family in CROSS_ENCODER_FAMILIES}


@pytest.fixture(scope="module")
def exported_cross(cross_encoders: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict:
    from fastmarco.model.export import export_model

    root = tmp_path_factory.mktemp("exported-cross")
    out = {}
    for family, folder in cross_encoders.items():
        for precision in ("fp32", "fp16"):
            out[family, precision] = root / f"{family}-{precision}"
            export_model(str(folder), out[family, precision], fp16=precision == "fp16")
    return out


def predict(folder: Path, queries: list[str], passages: list[str]) -> np.ndarray:
    from sentence_transformers import CrossEncoder

    model = CrossEncoder(str(folder), device="cpu")
    return np.asarray(model.predict(list(zip(queries, passages, strict=True)), show_progress_bar=False))


@pytest.mark.parametrize("family", CROSS_ENCODER_FAMILIES)
def test_export_matches_cross_encoder_predict(
    family: str, cross_encoders: dict[str, Path], exported_cross: dict
) -> None:
    expected = predict(cross_encoders[family], QUERIES, PASSAGES)
    assert expected.std() > 0.05  # the tiny model tells pairs apart, so the comparison means something
    for precision, tolerance in (("fp32", 1e-4), ("fp16", 2e-2)):
        directory = exported_cross[family, precision]
        manifest = json.loads((directory / "fastmarco.json").read_text())
        assert manifest["kind"] == "cross-encoder" and manifest["output"] == "score"
        assert manifest["activation"] == ("identity" if family.startswith("bert") else "sigmoid")
        # the first layer's attention fused; the last computes one query row (last_layer_for_the_first_token)
        assert manifest["precision"] == precision and manifest["fusions"].get("Attention") == 1
        got = CrossEncoderScorer.open(directory, device="cpu").score(QUERIES, PASSAGES)
        assert got.dtype == np.float32 and got.shape == (len(QUERIES),)
        np.testing.assert_allclose(got, expected, atol=tolerance * max(1.0, np.abs(expected).max()), rtol=0)


@pytest.mark.parametrize("attention", ["eager", "sdpa"])
@pytest.mark.parametrize("family", CROSS_ENCODER_FAMILIES)
def test_the_last_layer_for_the_first_token_scores_as_the_whole_one(
    family: str, attention: str, cross_encoders: dict[str, Path], exported_cross: dict
) -> None:
    """The traced last layer computes the first token's row alone: the same logits as the whole layer
    (padding and truncation included), the layer restored after; the exports carry one fused attention
    fewer than the model has layers."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from fastmarco.model.cross_encoder_export import last_layer_for_the_first_token

    if attention == "sdpa" and family.startswith("electra"):
        pytest.skip("transformers has no SDPA attention for ELECTRA: it traces eager attention")
    folder = cross_encoders[family]
    model = AutoModelForSequenceClassification.from_pretrained(str(folder), attn_implementation=attention)
    model.eval()
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    batch = tokenizer(
        QUERIES, PASSAGES, padding=True, truncation="longest_first", max_length=48, return_tensors="pt"
    )
    layers = getattr(model, model.base_model_prefix).encoder.layer
    whole = layers[-1]
    with torch.no_grad():
        expected = model(**batch).logits
        with last_layer_for_the_first_token(model):
            assert layers[-1] is not whole
            narrowed = model(**batch).logits
    assert layers[-1] is whole
    np.testing.assert_allclose(narrowed.numpy(), expected.numpy(), atol=1e-5)
    fusions = json.loads((exported_cross[family, "fp32"] / "fastmarco.json").read_text())["fusions"]
    assert fusions["Attention"] == len(layers) - 1


def test_batches_across_queries_keep_input_order(exported_cross: dict) -> None:
    directory = exported_cross["bert-cross-encoder", "fp32"]
    one_pair_batches = CrossEncoderScorer.open(directory, device="cpu", max_tokens=1)
    budgeted = CrossEncoderScorer.open(directory, device="cpu", max_tokens=256)
    calls: list[Update] = []
    many = one_pair_batches.score(QUERIES, PASSAGES, progress=calls.append)
    # the budget is honoured: one pair per batch
    assert [(u.done, u.total) for u in calls] == [(n, len(QUERIES)) for n in range(1, len(QUERIES) + 1)]
    np.testing.assert_allclose(budgeted.score(QUERIES, PASSAGES), many, atol=1e-5, rtol=0)
    reversed_scores = budgeted.score(QUERIES[::-1], PASSAGES[::-1])
    np.testing.assert_allclose(reversed_scores[::-1], many, atol=1e-5, rtol=0)
    assert budgeted.score([], []).shape == (0,)


def test_kinds_do_not_mix_and_bad_pairs_are_refused(exported_cross: dict, exported: dict) -> None:
    cross = exported_cross["bert-cross-encoder", "fp32"]
    bi = exported["bert-mean-normalize", "fp32"]
    with pytest.raises(ModelError, match="cross-encoder: it scores"):
        Encoder.open(cross, device="cpu")
    with pytest.raises(ModelError, match="not a cross-encoder"):
        CrossEncoderScorer.open(bi, device="cpu")
    assert isinstance(open_scorer(cross, device="cpu"), CrossEncoderScorer)
    assert isinstance(open_scorer(bi, device="cpu"), BiEncoderScorer)
    scorer = CrossEncoderScorer.open(cross, device="cpu")
    with pytest.raises(InputError, match="2 queries but 1 passages"):
        scorer.score(["a", "b"], ["c"])
    with pytest.raises(InputError, match=r"passages\[1\] is int"):
        scorer.score(["a", "b"], ["c", 3])  # type: ignore[list-item]


def test_unsupported_cross_encoders_are_refused(tmp_path: Path) -> None:
    from fastmarco.model.export import export_model

    two_labels = build_cross_encoder("bert-cross-encoder", tmp_path / "two", num_labels=2)
    with pytest.raises(ExportError, match="2 labels"):
        export_model(str(two_labels), tmp_path / "out")
    assert not (tmp_path / "out").exists()
    with pytest.raises(ExportError, match="--similarity does not apply"):
        export_model(str(two_labels), tmp_path / "out", similarity="dot")


def test_rerank_cli_takes_a_cross_encoder(
    cross_encoders: dict[str, Path], exported_cross: dict, tmp_path: Path
) -> None:
    family = "bert-cross-encoder"
    collection = tmp_path / "collection.tsv"
    collection.write_text("".join(f"{pid}\t{text}\n" for pid, text in enumerate(CORPUS)))
    queries = tmp_path / "queries.tsv"
    queries.write_text(f"q1\t{CORPUS[0]}\nq2\t{CORPUS[3]}\n")
    run = tmp_path / "run.trec"
    run.write_text(
        "".join(f"{q} Q0 {pid} {pid + 1} 0 bm25\n" for q in ("q1", "q2") for pid in range(len(CORPUS)))
    )
    out = tmp_path / "rr.trec"
    result = CliRunner().invoke(
        main,
        [
            "rerank",
            "--model",
            str(exported_cross[family, "fp32"]),
            "--run",
            str(run),
            "--queries",
            str(queries),
            "--collection",
            str(collection),
            "--out",
            str(out),
            "--device",
            "cpu",
        ],
    )
    assert result.exit_code == 0, result.output
    lines = [line.split() for line in out.read_text().splitlines()]
    for qid, text in (("q1", CORPUS[0]), ("q2", CORPUS[3])):
        expected = predict(cross_encoders[family], [text] * len(CORPUS), CORPUS)
        ranked = [int(fields[2]) for fields in lines if fields[0] == qid]
        assert ranked == list(np.argsort(-expected, kind="stable"))
        scores = [float(fields[4]) for fields in lines if fields[0] == qid]
        np.testing.assert_allclose(scores, np.sort(expected)[::-1], atol=1e-4)


def test_the_reranker_is_one_object_for_the_cli_and_the_engine(
    exported_cross: dict, exported: dict, tmp_path: Path
) -> None:
    """`fastmarco rerank` opens a `Reranker` alone (either kind); `Engine` holds a cross-encoder's:
    the same scores, best first with ties in the order given."""
    from fastmarco.engine import Reranker

    cross = exported_cross["bert-cross-encoder", "fp32"]
    bi = exported["bert-mean-normalize", "fp32"]
    reranker = Reranker.open(cross, device="cpu")
    assert reranker.cross_encoder is not None and Reranker.open(bi, device="cpu").cross_encoder is None
    with pytest.raises(ModelError, match="not a cross-encoder"):
        Reranker.open_cross_encoder(bi, device="cpu")
    texts = [*CORPUS, LONG]
    expected = CrossEncoderScorer.open(cross, device="cpu").score([CORPUS[0]] * len(texts), texts)
    np.testing.assert_allclose(reranker.rerank(CORPUS[0], texts), expected, atol=1e-6, rtol=0)
    collection = tmp_path / "collection.tsv"
    collection.write_text("".join(f"p{i}\t{text}\n" for i, text in enumerate(texts)))
    with PassageStore.open(collection) as passages:
        ranked = reranker.rerank_pids(CORPUS[0], [f"p{i}" for i in range(len(texts))], passages)
    assert [pid for pid, _ in ranked] == [f"p{i}" for i in np.argsort(-expected, kind="stable")]

"""`fastmarco export`."""

from __future__ import annotations

import click

from fastmarco.cli.app import main


@main.command()
@click.argument("model")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Directory to create.")
@click.option("--fp16", is_flag=True, help="Convert to fp16 (for the GPU) after the transformer fusions.")
@click.option(
    "--bf16",
    is_flag=True,
    help="Run in bf16 on CPUs with bf16 instructions (AVX512_BF16, AMX) on the openvino runtime: the "
    "fp32 graph, checked against sentence-transformers in bf16.",
)
@click.option(
    "--int8",
    is_flag=True,
    help="Quantize the MatMuls to int8 for the CPU (ONNX Runtime dynamic, outlier channels kept in "
    "fp32); refused if it drifts from fp32.",
)
@click.option(
    "--int8-static",
    is_flag=True,
    help="Quantize statically for the openvino runtime (NNCF, calibrated on --calibration's passages or "
    "the bundled demo texts; 8-bit weights on CPUs with VNNI, else 7-bit; an OpenVINO graph, which only "
    "openvino runs): the fastest CPU path where there is no AMX.",
)
@click.option(
    "--calibration",
    type=click.Path(exists=True, dir_okay=False),
    help="With --int8 or --int8-static: calibrate on 300 passages of this corpus file (any format encode "
    "reads; spread through its first 30,000) instead of the bundled demo texts. The corpus you will "
    "encode is the best choice: static int8 keeps closer to fp32.",
)
@click.option(
    "--int8-attention",
    is_flag=True,
    help="With --int8, quantize the fused attention too: ~15% faster, about twice the error.",
)
@click.option(
    "--optimize",
    type=click.Choice(["O1", "O2", "O3", "O4"]),
    help="ORT optimization level (default O2: the transformer fusions).",
)
@click.option(
    "--max-seq-length", type=click.IntRange(min=1), help="Truncation length (default: the model's)."
)
@click.option("--similarity", type=click.Choice(["cosine", "dot"]), help="Override the model's similarity.")
@click.option("--opset", type=click.IntRange(min=1), help="ONNX opset (default: optimum's choice).")
@click.option(
    "--overwrite", is_flag=True, help="Replace OUT if an earlier export wrote it (nothing else in it)."
)
def export(
    model: str,
    out: str,
    fp16: bool,
    bf16: bool,
    int8: bool,
    int8_static: bool,
    int8_attention: bool,
    optimize: str | None,
    max_seq_length: int | None,
    similarity: str | None,
    opset: int | None,
    calibration: str | None,
    overwrite: bool,
) -> None:
    """Export MODEL (hub id or local folder) to an ONNX directory: a bi-encoder's graph outputs the
    sentence embedding, a CrossEncoder's the score `CrossEncoder.predict` gives."""
    from fastmarco.model.export import export_model

    report = export_model(
        model,
        out,
        fp16=fp16,
        bf16=bf16,
        int8=int8,
        int8_static=int8_static,
        int8_attention=int8_attention,
        optimize=optimize,  # type: ignore[arg-type]  # click.Choice has checked it
        max_seq_length=max_seq_length,
        similarity=similarity,  # type: ignore[arg-type]
        opset=opset,
        calibration=calibration,
        overwrite=overwrite,
    )
    fusions = ", ".join(f"{name} x{count}" for name, count in report.fusions.items()) or "none"
    click.echo(f"exported {model} -> {report.directory}")
    click.echo(f"  {report.card.describe()}")
    click.echo(f"  precision {report.precision}; optimize {report.optimize or 'none'}; fusions: {fusions}")
    click.echo(f"  parity with sentence-transformers: {report.parity}")

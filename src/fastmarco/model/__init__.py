"""Models: the export to ONNX, its manifest, the batched encoder and scorers."""

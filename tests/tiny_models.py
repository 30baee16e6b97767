"""Tiny random-weight sentence-transformers models, one per architecture family fastmarco exports."""

from __future__ import annotations

from pathlib import Path

FAMILIES = (
    "distilbert-mean-cosine",  # msmarco-distilbert-base-v3
    "roberta-mean-cosine",  # msmarco-roberta-base-v3
    "roberta-cls-dense-layernorm-dot",  # msmarco-roberta-base-ance-firstp
    "bert-mean-normalize",  # all-MiniLM-L6-v2
)

CORPUS = [
    "how big is london",
    "The presence of communication amid scientific minds was equally important to the success.",
    "Wi-Fi is a technology that allows electronic devices to connect to a wireless LAN network.",
    "what is the population of the united states of america in 2019",
    "Archduke Franz Ferdinand of Austria was assassinated in Sarajevo on 28 June 1914.",
    "CafÃ© au lait, naÃ¯ve rÃ©sumÃ© 12 cm 5 gigahertz (6 cm) SHF ISM radio bands!",
]


def _wordpiece_vocab(path: Path) -> None:
    words = sorted({w.strip(".,!?()").lower() for text in CORPUS for w in text.split()} - {""})
    chars = sorted({c for text in CORPUS for c in text.lower() if not c.isspace()})
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *chars, *(f"##{c}" for c in chars), *words]
    path.write_text("\n".join(dict.fromkeys(vocab)) + "\n")


def build(family: str, out: Path) -> Path:
    """Write a sentence-transformers model folder for `family` into `out` and return it."""
    import torch
    from sentence_transformers import SentenceTransformer

    try:  # sentence-transformers >= 5.7 moved the modules
        from sentence_transformers.sentence_transformer import modules as models
    except ImportError:
        from sentence_transformers import models
    from tokenizers import ByteLevelBPETokenizer
    from transformers import (
        BertConfig,
        BertModel,
        BertTokenizerFast,
        DistilBertConfig,
        DistilBertModel,
        DistilBertTokenizerFast,
        RobertaConfig,
        RobertaModel,
        RobertaTokenizerFast,
    )

    torch.manual_seed(sum(map(ord, family)))
    hf = out / "hf"
    hf.mkdir(parents=True)
    if family.startswith("roberta"):
        bpe = ByteLevelBPETokenizer()
        bpe.train_from_iterator(
            CORPUS * 4, vocab_size=400, special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
        )
        bpe.save_model(str(hf))
        tokenizer = RobertaTokenizerFast(
            vocab_file=str(hf / "vocab.json"), merges_file=str(hf / "merges.txt")
        )
        config = RobertaConfig(
            vocab_size=len(tokenizer),
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=64,
            max_position_embeddings=66,
            pad_token_id=1,
            type_vocab_size=1,
        )
        model = RobertaModel(config, add_pooling_layer=False)
    else:
        _wordpiece_vocab(hf / "vocab.txt")
        if family.startswith("distilbert"):
            tokenizer = DistilBertTokenizerFast(vocab_file=str(hf / "vocab.txt"))
            config = DistilBertConfig(
                vocab_size=len(tokenizer),
                dim=32,
                n_layers=2,
                n_heads=4,
                hidden_dim=64,
                max_position_embeddings=64,
            )
            model = DistilBertModel(config)
        else:
            tokenizer = BertTokenizerFast(vocab_file=str(hf / "vocab.txt"))
            config = BertConfig(
                vocab_size=len(tokenizer),
                hidden_size=32,
                num_hidden_layers=2,
                num_attention_heads=4,
                intermediate_size=64,
                max_position_embeddings=64,
            )
            model = BertModel(config, add_pooling_layer=False)
    # larger than default init, so that different texts get clearly different embeddings
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.normal_(0.0, 0.2)
    model.save_pretrained(hf)
    tokenizer.save_pretrained(hf)

    transformer = models.Transformer(str(hf), max_seq_length=48)
    pooling_mode = "cls" if "-cls-" in family else "mean"
    modules = [transformer, models.Pooling(32, pooling_mode=pooling_mode)]
    if "dense" in family:
        modules.append(models.Dense(32, 24, activation_function=torch.nn.Identity()))
        modules.append(models.LayerNorm(24))
    if "normalize" in family:
        modules.append(models.Normalize())
    similarity = "dot" if family.endswith("-dot") else "cosine"
    st_model = SentenceTransformer(modules=modules, device="cpu", similarity_fn_name=similarity)
    folder = out / "st"
    st_model.save(str(folder))
    return folder


CROSS_ENCODER_FAMILIES = (
    "bert-cross-encoder",  # cross-encoder/ms-marco-MiniLM-L-6-v2 (Identity activation, raw logits)
    "electra-cross-encoder",  # cross-encoder/ms-marco-electra-base (sentence-transformers' default Sigmoid)
)


def build_cross_encoder(
    family: str, out: Path, *, num_labels: int = 1, vocab: Path | None = None, max_length: int = 48
) -> Path:
    """Write a sentence-transformers CrossEncoder folder for `family` into `out` and return it.
    `vocab`: a real WordPiece vocab.txt (so real text is not read character by character)."""
    import torch
    from sentence_transformers import CrossEncoder
    from transformers import (
        BertConfig,
        BertForSequenceClassification,
        BertTokenizerFast,
        ElectraConfig,
        ElectraForSequenceClassification,
        ElectraTokenizerFast,
    )

    torch.manual_seed(sum(map(ord, family)))
    hf = out / "hf"
    hf.mkdir(parents=True)
    if vocab is None:
        _wordpiece_vocab(hf / "vocab.txt")
    else:
        (hf / "vocab.txt").write_bytes(vocab.read_bytes())
    shape = {
        "hidden_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "intermediate_size": 64,
        "max_position_embeddings": max(64, max_length),
        "num_labels": num_labels,
    }
    model: BertForSequenceClassification | ElectraForSequenceClassification
    if family.startswith("electra"):
        tokenizer = ElectraTokenizerFast(vocab_file=str(hf / "vocab.txt"))
        model = ElectraForSequenceClassification(
            ElectraConfig(vocab_size=len(tokenizer), embedding_size=16, **shape)
        )
    else:
        tokenizer = BertTokenizerFast(vocab_file=str(hf / "vocab.txt"))
        model = BertForSequenceClassification(BertConfig(vocab_size=len(tokenizer), **shape))
    with torch.no_grad():  # large enough that different pairs get clearly different scores
        for name, parameter in model.named_parameters():
            if "LayerNorm" not in name:
                parameter.normal_(
                    0.0, 1.0 if name in ("classifier.weight", "classifier.out_proj.weight") else 0.2
                )
    model.save_pretrained(hf)
    tokenizer.save_pretrained(hf)
    activation = torch.nn.Identity() if family.startswith("bert") else None
    cross_encoder = CrossEncoder(str(hf), device="cpu", max_length=max_length, activation_fn=activation)
    folder = out / "ce"
    cross_encoder.save(str(folder))
    return folder

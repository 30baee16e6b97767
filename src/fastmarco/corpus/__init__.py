"""Corpora: one record type, one id rule and the registry of the file formats that hold them.

`formats.CORPUS_FORMATS` maps a name to a registered `CorpusFormat`; MS MARCO TSV (the default)
and BEIR's JSON Lines so far.
A new format is one module that defines its class and calls `register` on import, plus its import
below."""

from fastmarco.corpus import beir, msmarco_tsv  # noqa: F401  (register the formats)

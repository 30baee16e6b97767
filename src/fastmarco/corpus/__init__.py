"""Corpora: one record type, one id rule and the registry of the file formats that hold them.

`formats.CORPUS_FORMATS` maps a name to a registered `CorpusFormat`; MS MARCO TSV is the first.
A new format is one module that defines its class and calls `register` on import, plus its import
below."""

from fastmarco.corpus import msmarco_tsv  # noqa: F401  (registers the format)

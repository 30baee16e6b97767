"""Encoding a corpus into shards: the job spec, the corpus reader, the local run, parallel parts and
their runners."""

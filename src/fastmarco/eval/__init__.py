"""Evaluation: official MS MARCO / trec_eval metrics and the BM25 baseline."""

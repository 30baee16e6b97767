"""Pipelines built on models, stores and search (re-ranking); never on the CLI."""

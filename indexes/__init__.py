"""Ingest, chunking, sparse and dense indexes, and their crash-safe persistence."""

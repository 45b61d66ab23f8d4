"""Retrieval fusion, context assembly, prompts, LLM calls and pipelines."""

"""Expert cards: registry, knowledge generation, logit fusion and training (later issues)."""

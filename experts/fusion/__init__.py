"""White-box logit fusion: a frozen base LM and expert cards combined at every decoding step.

combine (the rules) -> vocab (may these models be fused?) -> engines/fused (forward passes, own KV
caches) -> decoder/sampling (generation) ; corpus/scoring/fit/evaluate (fitting and measuring rules
on held-out text) ; cards/spec/service (finding cards, model strings, serving).
"""

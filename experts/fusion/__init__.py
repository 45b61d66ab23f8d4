"""White-box logit fusion: a frozen base LM and expert cards combined at every decoding step.

combine (the rules) -> vocab (may these models be fused?) -> fused (the models on the local runtime,
own KV caches) -> decoder (generation through the runtime's token loop) ; corpus/scoring/fit/evaluate
(fitting and measuring rules on held-out text) ; cards/spec/service (finding cards, model strings,
serving). The fusion LiteLLM provider lives in api (api/litellm_fusion.py).
"""

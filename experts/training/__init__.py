"""Card training: corpus -> held-out split -> packed blocks -> LoRA on a frozen base -> card folder."""

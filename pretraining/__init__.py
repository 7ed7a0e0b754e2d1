"""Pretraining, SFT, DPO, merge and held-out evaluation: the checkpoints the RL side starts from.

Modules: ``data`` (synthetic verifiable problems and corpora), ``tokenizer``, ``chat``, ``model`` (Qwen3 sizes),
``packing``, ``trainer`` (the one loop), ``pretrain`` / ``sft`` / ``dpo`` / ``merge`` / ``evaluate`` (the
commands), ``distributed`` (FSDP2), ``checkpoint``, ``metrics``, ``pipeline``. See docs/pretraining.md.
"""

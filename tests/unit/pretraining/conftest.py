"""Shared fixtures for the pretraining unit tests: a small trained tokenizer and a tiny model."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def tokenizer():
    from pretraining.data import mixture_documents, sft_conversations
    from pretraining.tokenizer import train_tokenizer

    docs = mixture_documents({"problems": 0.7, "arithmetic_facts": 0.3}, 300, seed=0)
    chats = [f"<|im_start|>user\n{c[0]['content']}<|im_end|>\n<|im_start|>assistant\n{c[1]['content']}<|im_end|>"
             for c in sft_conversations(30, 0, [1, 3])]
    return train_tokenizer(docs + chats, vocab_size=400)


@pytest.fixture(scope="session")
def tiny_model(tokenizer):
    from pretraining.model import build_model

    return build_model("tiny", len(tokenizer), seed=0, eos_token_id=tokenizer.eos_token_id,
                       pad_token_id=tokenizer.pad_token_id).eval()

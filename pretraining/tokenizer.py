"""Byte-level BPE tokenizer trained on the corpus, with digits split into single tokens.

Special tokens: ``<|endoftext|>`` (document separator and pad), ``<|im_start|>`` / ``<|im_end|>`` (chat
turns; ``<|im_end|>`` is the end-of-sequence for generation) and ``<|pad|>``. The chat template from
:mod:`pretraining.chat` is stored in ``tokenizer_config.json``, so transformers and vLLM apply it alike.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

from pretraining.chat import CHAT_TEMPLATE, ENDOFTEXT, IM_END, SPECIAL_TOKENS


def train_tokenizer(texts: Iterable[str], vocab_size: int = 512, min_frequency: int = 2):
    """Train a byte-level BPE (digits split) on ``texts``; returns a transformers fast tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    if vocab_size < 256 + len(SPECIAL_TOKENS):
        raise ValueError(f"vocab_size={vocab_size}: a byte-level BPE needs at least {256 + len(SPECIAL_TOKENS)}")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),  # "123" -> "1" "2" "3"
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    texts = list(texts)
    if not texts:
        raise ValueError("train_tokenizer: no texts to train on")
    tok.train_from_iterator(texts, trainer)
    return wrap_tokenizer(tok)


def wrap_tokenizer(tok):
    """A ``PreTrainedTokenizerFast`` around a ``tokenizers.Tokenizer`` with our special tokens and template."""
    from transformers import PreTrainedTokenizerFast

    hf = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=IM_END, pad_token=ENDOFTEXT, unk_token=None,
                                 additional_special_tokens=[t for t in SPECIAL_TOKENS if t not in (IM_END, ENDOFTEXT)])
    hf.chat_template = CHAT_TEMPLATE
    hf.model_max_length = 1 << 20
    return hf


def save_tokenizer(tokenizer, path: str | Path) -> None:
    Path(path).mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(str(path), save_jinja_files=False)  # chat template inside tokenizer_config.json


def load_tokenizer(path: str | Path):
    """Load a tokenizer folder written by :func:`save_tokenizer` or any HF checkpoint's tokenizer (its chat
    template from ``tokenizer_config.json`` or ``chat_template.jinja``). The template is checked here
    (:func:`pretraining.chat.check_chat_template`), so a template without an assistant turn or an
    end-of-turn token stops a job at start-up with the file and the rule named."""
    from transformers import AutoTokenizer

    from pretraining.chat import ChatTemplateError, check_chat_template

    path = Path(path)
    if not any((path / f).is_file() for f in ("tokenizer.json", "tokenizer.model", "vocab.json")):
        raise FileNotFoundError(f"{path}: no tokenizer files (tokenizer.json, tokenizer.model or vocab.json); "
                                "train one with pretraining.tokenizer.train_tokenizer")
    tok = AutoTokenizer.from_pretrained(str(path))
    if tok.chat_template is None:
        raise ChatTemplateError(f"{path}: the tokenizer has no chat template (chat_template in tokenizer_config.json "
                         "or chat_template.jinja); every job formats prompts with it")
    check_chat_template(tok)
    return tok


def pad_token_id(tokenizer) -> int:
    """The id to pad rows with: the pad token, else EOS (many released tokenizers have no pad token), else 0.
    Padded positions carry no loss and no attention, so any id works."""
    for i in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if i is not None:
            return int(i)
    return 0

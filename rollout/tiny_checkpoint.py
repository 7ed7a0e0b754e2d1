"""A tiny random-weight Qwen3 checkpoint and its tokenizer, for tests and benchmarks.

vLLM and transformers both load it unchanged, so mechanics (in-flight weight sync, routing, the
service API) can be exercised without a trained model. Sizes respect vLLM CPU's attention limits
(head_dim >= 32). The tokenizer is a byte-level BPE trained with ``tokenizers`` on synthetic
arithmetic strings, with a chat template so ``/v1/chat/completions`` works.
"""

from __future__ import annotations

import random
from pathlib import Path

CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def synthetic_corpus(n: int = 400, seed: int = 0) -> list[str]:
    """Short arithmetic word problems and answers (enough text to train a small BPE)."""
    rng = random.Random(seed)
    names = ["Ann", "Bob", "Cleo", "Dev", "Eli", "Fay"]
    things = ["apples", "coins", "books", "pens", "cards"]
    out = []
    for _ in range(n):
        a, b = rng.randint(1, 99), rng.randint(1, 99)
        who, what = rng.choice(names), rng.choice(things)
        out.append(f"{who} has {a} {what} and gets {b} more. How many {what} now? "
                   f"Answer: {a} + {b} = {a + b}. The answer is \\boxed{{{a + b}}}.")
    return out


def build_tokenizer(out_dir: str | Path, vocab_size: int = 512):
    """Train a byte-level BPE on :func:`synthetic_corpus` and save it as a HF fast tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(synthetic_corpus(), trainer=trainer)
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                 bos_token=None, unk_token=None)
    hf.chat_template = CHAT_TEMPLATE
    hf.save_pretrained(str(out_dir))
    return hf


def build_tiny_qwen3(out_dir: str | Path, *, hidden_size: int = 64, num_layers: int = 2, num_heads: int = 2,
                     vocab_size: int = 512, max_position_embeddings: int = 1024, seed: int = 0) -> Path:
    """Write a random-weight Qwen3 (float32 safetensors) plus tokenizer to ``out_dir``; returns it."""
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tok = build_tokenizer(out_dir, vocab_size)
    cfg = Qwen3Config(
        vocab_size=len(tok), hidden_size=hidden_size, intermediate_size=hidden_size * 2,
        num_hidden_layers=num_layers, num_attention_heads=num_heads, num_key_value_heads=num_heads,
        head_dim=hidden_size // num_heads, max_position_embeddings=max_position_embeddings,
        tie_word_embeddings=False, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
        bos_token_id=None, torch_dtype="float32",
    )
    torch.manual_seed(seed)
    model = Qwen3ForCausalLM(cfg)
    with torch.no_grad():  # larger-than-default init so samples are diverse and logprobs non-trivial
        for p in model.parameters():
            if p.dim() >= 2:
                p.normal_(0.0, 0.2)
    model.save_pretrained(str(out_dir), safe_serialization=True)
    return out_dir


def perturbed_state_dict(model_dir: str | Path, scale: float = 0.05, seed: int = 1) -> dict:
    """The checkpoint's weights plus Gaussian noise: a stand-in for "the learner's next version"."""
    import torch
    from safetensors.torch import load_file

    sd = {}
    g = torch.Generator().manual_seed(seed)
    for f in sorted(Path(model_dir).glob("*.safetensors")):
        for name, t in load_file(str(f)).items():
            sd[name] = t + scale * torch.randn(t.shape, generator=g, dtype=t.dtype)
    return sd

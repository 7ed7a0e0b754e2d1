"""The chat format shared by SFT, DPO, evaluation, the rollout side and GRPO.

The template (Jinja, stored in ``tokenizer_config.json``) is ChatML-style and wraps assistant content
in ``{% generation %}`` so ``apply_chat_template(..., return_assistant_tokens_mask=True)`` marks the
tokens SFT trains on.
"""

from __future__ import annotations

IM_START, IM_END, ENDOFTEXT, PAD = "<|im_start|>", "<|im_end|>", "<|endoftext|>", "<|pad|>"
SPECIAL_TOKENS = [ENDOFTEXT, IM_START, IM_END, PAD]

CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' }}"
    "{%- if message['role'] == 'assistant' %}"
    "{% generation %}{{- message['content'] + '<|im_end|>' }}{% endgeneration %}{{- '\\n' }}"
    "{%- else %}"
    "{{- message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)


def format_prompt(tokenizer, question: str) -> str:
    """The prompt string for one user question, ending with the assistant generation prompt."""
    return tokenizer.apply_chat_template([{"role": "user", "content": question}], tokenize=False,
                                         add_generation_prompt=True)


def encode_prompt_completion(tokenizer, prompt: str, completion: str) -> tuple[list[int], list[int]]:
    """Token ids of the chat prompt for ``prompt`` and of ``completion`` + end-of-turn, separately.

    Concatenated they equal the tokenised full conversation (the prompt ends at a special token, so
    BPE never merges across the boundary).
    """
    p = tokenizer(format_prompt(tokenizer, prompt), add_special_tokens=False)["input_ids"]
    c = tokenizer(completion + IM_END, add_special_tokens=False)["input_ids"]
    return p, c


def encode_conversation(tokenizer, messages: list[dict[str, str]]) -> tuple[list[int], list[int]]:
    """``(input_ids, assistant_mask)`` for a conversation; the mask is 1 on assistant tokens only."""
    out = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True,
                                        return_assistant_tokens_mask=True)
    ids, mask = list(out["input_ids"]), list(out["assistant_masks"])
    if sum(mask) == 0:
        raise ValueError("conversation has no assistant tokens to train on: "
                         f"{[m.get('role') for m in messages]}")
    return ids, mask

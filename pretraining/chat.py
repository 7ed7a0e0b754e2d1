"""The chat format shared by SFT, DPO, evaluation, the rollout side and GRPO: any checkpoint's own template.

Prompts and training sequences are rendered with the checkpoint's chat template (Jinja, in
``tokenizer_config.json`` or ``chat_template.jinja``), whatever its family: ChatML, Llama-3 headers,
Mistral ``[INST]``, templates with a default system prompt. Loss masks need no ``{% generation %}``
markers: an assistant turn is the text between the rendering of the conversation before it with the
generation prompt and the first end-of-turn token after that (the tokenizer's EOS and the
``generation_config.json`` EOS ids, as vLLM stops on them). Each piece is tokenized on its own, so
the prompt's ids are exactly what a rollout engine is given and the completion's ids what it samples.

The project's own tokenizer (:mod:`pretraining.tokenizer`) uses :data:`CHAT_TEMPLATE`, ChatML with
``<|im_end|>`` ending a turn.
"""

from __future__ import annotations

import json
import logging
from functools import lru_cache
from pathlib import Path

log = logging.getLogger(__name__)

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
"""The project's own template (ChatML; the ``generation`` markers serve transformers' assistant masks)."""

QUESTION = "{question}"
"""The placeholder a ``prompt_template`` must contain."""


class ChatTemplateError(ValueError):
    """A chat template that cannot give prompts or loss masks; the message names the rule it breaks."""


def prompt_messages(question: str, system_prompt: str | None = None, prompt_template: str | None = None) -> list[dict]:
    """The messages that ask ``question``: an optional system message, then the user turn
    (``prompt_template`` with ``{question}`` replaced; other braces are kept literally)."""
    text = prompt_template.replace(QUESTION, question) if prompt_template else question
    msgs = [{"role": "system", "content": system_prompt}] if system_prompt else []
    return msgs + [{"role": "user", "content": text}]


def render(tokenizer, messages: list[dict], add_generation_prompt: bool) -> str:
    """The template's text for ``messages``. A template that refuses a system role (Mistral's raises)
    gets the system text prepended to the first user message instead, as those models are prompted."""
    def apply(msgs):
        return tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=add_generation_prompt)

    if tokenizer.chat_template is None:
        raise ChatTemplateError(f"{_where(tokenizer)}: the tokenizer has no chat template")
    if not messages or messages[0].get("role") != "system":
        return apply(messages)
    try:
        return apply(messages)
    except Exception as e:  # noqa: BLE001 - jinja2 TemplateError from the template's raise_exception
        if len(messages) < 2 or messages[1].get("role") != "user":
            raise ChatTemplateError(f"{_where(tokenizer)}: the template refuses this conversation ({e})") from None
        log.debug("%s refuses a system message (%s): prepending it to the first user message", _where(tokenizer), e)
        merged = [{"role": "user", "content": f"{messages[0]['content']}\n\n{messages[1]['content']}"}, *messages[2:]]
        return apply(merged)


def format_prompt(tokenizer, question: str, system_prompt: str | None = None,
                  prompt_template: str | None = None) -> str:
    """The prompt string for one user question, ending with the assistant generation prompt."""
    return render(tokenizer, prompt_messages(question, system_prompt, prompt_template), True)


def encode_prompt(tokenizer, question: str, system_prompt: str | None = None,
                  prompt_template: str | None = None) -> list[int]:
    """Token ids of :func:`format_prompt` (the template writes any BOS; the tokenizer adds none)."""
    return _ids(tokenizer, format_prompt(tokenizer, question, system_prompt, prompt_template))


def end_of_turn_ids(tokenizer) -> list[int]:
    """Token ids that end an assistant turn: the tokenizer's EOS and the checkpoint's
    ``generation_config.json`` ``eos_token_id`` (one id or a list), in that order, without duplicates."""
    ids = [int(tokenizer.eos_token_id)] if tokenizer.eos_token_id is not None else []
    ids += [i for i in _generation_eos(str(getattr(tokenizer, "name_or_path", "") or "")) if i not in ids]
    if not ids:
        raise ChatTemplateError(f"{_where(tokenizer)}: no end-of-turn token: the tokenizer has no eos_token and "
                                "generation_config.json no eos_token_id")
    return ids


@lru_cache(maxsize=64)
def _generation_eos(folder: str) -> tuple[int, ...]:
    gen = Path(folder) / "generation_config.json"
    if not folder or not gen.is_file():
        return ()
    eos = json.loads(gen.read_text()).get("eos_token_id")
    return tuple(int(i) for i in (eos if isinstance(eos, list) else [eos] if eos is not None else []))


def _where(tokenizer) -> str:
    folder = Path(str(getattr(tokenizer, "name_or_path", "") or "the tokenizer"))
    for name in ("chat_template.jinja", "tokenizer_config.json"):
        if (folder / name).is_file() and (name != "tokenizer_config.json" or "chat_template" in (folder / name).read_text()):
            return str(folder / name)
    return str(folder)


def _ids(tokenizer, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"]) if text else []


def _assistant_spans(tokenizer, messages: list[dict], full: str, only_last: bool) -> list[tuple[int, int, bool]]:
    """``(start, end, closed)`` character spans of the trained assistant turns in ``full``; ``closed`` is
    False when no end-of-turn token follows the turn (the caller appends one)."""
    stops = [tokenizer.convert_ids_to_tokens(i) for i in end_of_turn_ids(tokenizer)]
    turns = [i for i, m in enumerate(messages) if m.get("role") == "assistant"]
    if only_last:
        turns = turns[-1:]
    spans = []
    for i in turns:
        tail = str(messages[i].get("content") or "").strip()[-16:]
        if tail and tail not in full:
            raise ChatTemplateError(f"{_where(tokenizer)}: the chat template has no assistant turn: it does not "
                                    f"render assistant message {i}'s text")
        prefix = render(tokenizer, messages[:i], True) if i else ""
        if not full.startswith(prefix):
            raise ChatTemplateError(
                f"{_where(tokenizer)}: the conversation before assistant turn {i}, rendered with the generation "
                "prompt, is not the start of the whole conversation's rendering; loss masks need the generation "
                f"prompt to be where the assistant text begins (prompt ends {prefix[-60:]!r})")
        start = len(prefix)
        found = [(f, s) for s in stops if s and (f := full.find(s, start)) >= 0]
        if found:
            stop, token = min(found)
            end, closed = stop + len(token), True
        elif i + 1 == len(messages):
            end, closed = len(full.rstrip()), False
        else:
            raise ChatTemplateError(f"{_where(tokenizer)}: assistant turn {i} is not closed by an end-of-turn token "
                                    f"({', '.join(stops)}: the tokenizer's eos and generation_config.json)")
        if tail and tail not in full[start:end]:
            raise ChatTemplateError(f"{_where(tokenizer)}: the chat template has no assistant turn: assistant message "
                                    f"{i}'s text does not appear after its generation prompt")
        spans.append((start, end, closed))
    return spans


def encode_conversation(tokenizer, messages: list[dict[str, str]],
                        only_last: bool = False) -> tuple[list[int], list[int]]:
    """``(input_ids, assistant_mask)`` for a conversation rendered with the tokenizer's own template; the
    mask is 1 on assistant text and its end-of-turn token (every assistant turn, or ``only_last``)."""
    full = render(tokenizer, messages, False)
    spans = _assistant_spans(tokenizer, messages, full, only_last)
    if not spans:
        raise ValueError("conversation has no assistant tokens to train on: "
                         f"{[m.get('role') for m in messages]}")
    ids: list[int] = []
    mask: list[int] = []
    pos = 0
    for start, end, closed in spans:
        for text, bit in ((full[pos:start], 0), (full[start:end], 1)):
            piece = _ids(tokenizer, text)
            ids += piece
            mask += [bit] * len(piece)
        if not closed:
            ids.append(end_of_turn_ids(tokenizer)[0])
            mask.append(1)
        pos = end
    if not any(mask):
        raise ValueError("conversation has no assistant tokens to train on: the assistant turns render empty")
    rest = _ids(tokenizer, full[pos:].rstrip() if spans[-1][2] else "")
    return ids + rest, mask + [0] * len(rest)


def encode_prompt_completion(tokenizer, prompt: str | list[dict], completion: str, *,
                             system_prompt: str | None = None,
                             prompt_template: str | None = None) -> tuple[list[int], list[int]]:
    """Token ids of the chat prompt and of ``completion`` + the template's end-of-turn, separately.

    ``prompt`` is a question (formatted with ``system_prompt`` / ``prompt_template``) or the messages
    before the answer (TRL's conversational format; ``system_prompt`` leads them when they have none)."""
    if isinstance(prompt, list):
        msgs = list(prompt)
        if system_prompt and (not msgs or msgs[0].get("role") != "system"):
            msgs.insert(0, {"role": "system", "content": system_prompt})
    else:
        msgs = prompt_messages(prompt, system_prompt, prompt_template)
    ids, mask = encode_conversation(tokenizer, msgs + [{"role": "assistant", "content": completion}], only_last=True)
    first = mask.index(1)
    last = len(mask) - 1 - mask[::-1].index(1)
    return ids[:first], ids[first:last + 1]


def check_chat_template(tokenizer) -> None:
    """Refuse, at start-up, a template that cannot give prompts and assistant masks (the message names the
    file and the rule): no template, no generation prompt, no assistant turn, no end-of-turn token."""
    try:
        ids, mask = encode_conversation(tokenizer, [{"role": "user", "content": "What is 1 + 1?"},
                                                    {"role": "assistant", "content": "1 + 1 = 2. The answer is 2."}])
    except ChatTemplateError:
        raise
    except ValueError as e:
        raise ChatTemplateError(f"{_where(tokenizer)}: the chat template renders no assistant turn ({e})") from None
    if mask.index(1) == 0:
        raise ChatTemplateError(f"{_where(tokenizer)}: the chat template renders no prompt before the assistant turn")

"""Prompts and loss masks from each family's own chat template (Llama-3 headers, ChatML with a default
system prompt, Qwen3 with its empty think block, Mistral ``[INST]``), with no ``{% generation %}`` tags:
the trained tokens are exactly the assistant text and its end-of-turn token, and a template that cannot
give them is refused naming the file and the rule."""

from __future__ import annotations

import json

import pytest

from pretraining.chat import (ChatTemplateError, check_chat_template, encode_conversation, encode_prompt,
                              encode_prompt_completion, end_of_turn_ids, format_prompt)
from pretraining.tokenizer import load_tokenizer, pad_token_id
from tests.fixtures.tiny_checkpoint import FAMILIES, family_tokenizer

CONV = [{"role": "user", "content": "What is 2 + 3?"},
        {"role": "assistant", "content": "2 + 3 = 5. The answer is \\boxed{5}."},
        {"role": "user", "content": "And 4 + 4?"},
        {"role": "assistant", "content": "The answer is \\boxed{8}."}]
END = {"llama": "<|eot_id|>", "qwen2": "<|im_end|>", "qwen3": "<|im_end|>", "mistral": "</s>"}


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def family(request, tmp_path_factory):
    """``(name, tokenizer)`` loaded from a folder as a checkpoint ships it (with its generation_config)."""
    name = request.param
    folder = tmp_path_factory.mktemp(name)
    tok = family_tokenizer(name)
    tok.save_pretrained(str(folder))
    eos = [tok.convert_tokens_to_ids(t) for t in FAMILIES[name]["generation_eos"]]
    (folder / "generation_config.json").write_text(json.dumps({"eos_token_id": eos}))
    return name, load_tokenizer(folder)


def _trained_text(tok, ids, mask) -> str:
    return tok.decode([i for i, m in zip(ids, mask) if m]).replace(" ", "")


def test_only_assistant_turns_and_their_end_token_are_trained(family):
    name, tok = family
    ids, mask = encode_conversation(tok, CONV)
    think = "<think>\n\n</think>\n\n" if name == "qwen3" else ""  # Qwen3 renders the last turn's empty think
    want = f"2 + 3 = 5. The answer is \\boxed{{5}}.{END[name]}{think}The answer is \\boxed{{8}}.{END[name]}"
    assert _trained_text(tok, ids, mask) == want.replace(" ", "")
    assert "What" not in tok.decode([i for i, m in zip(ids, mask) if m])  # no user text is trained


def test_prompt_and_completion_concatenate_to_what_the_engine_sees(family):
    name, tok = family
    prompt, completion = encode_prompt_completion(tok, "What is 1 + 1?", "The answer is 2.",
                                                  prompt_template="Q: {question}")
    assert prompt == encode_prompt(tok, "What is 1 + 1?", prompt_template="Q: {question}")
    assert completion[-1] in end_of_turn_ids(tok)
    assert tok.decode(completion).replace(" ", "").startswith(("Theanswer", "<think>"))
    bos = tok.bos_token_id
    if bos is not None:  # the template writes BOS once; the tokenizer's own post-processor adds none here
        assert prompt.count(bos) == 1


def test_a_system_prompt_reaches_every_family(family):
    name, tok = family
    text = format_prompt(tok, "What is 1 + 1?", system_prompt="Answer in a box.")
    assert "Answer in a box." in text and "What is 1 + 1?" in text
    if name == "mistral":  # no system role: prepended to the question
        assert "[INST] Answer in a box.\n\nWhat is 1 + 1? [/INST]" in text


def test_the_default_system_prompt_stays_when_none_is_given(family):
    name, tok = family
    text = format_prompt(tok, "hi")
    assert ("You are a helpful assistant." in text) == (name == "qwen2")


def test_tokenizers_without_a_pad_token_pad_with_eos(family):
    name, tok = family
    assert pad_token_id(tok) == (tok.pad_token_id if FAMILIES[name]["pad"] else tok.eos_token_id)


def test_end_of_turn_comes_from_tokenizer_and_generation_config(family):
    name, tok = family
    ids = end_of_turn_ids(tok)
    assert ids[0] == tok.eos_token_id
    assert {tok.convert_ids_to_tokens(i) for i in ids} == set(FAMILIES[name]["generation_eos"]) | {tok.eos_token}


def test_a_template_without_an_assistant_turn_is_refused_naming_file_and_rule(tmp_path):
    tok = family_tokenizer("qwen2")
    tok.chat_template = ("{% for m in messages %}{% if m.role != 'assistant' %}<|im_start|>{{ m.role }}\n"
                         "{{ m.content }}<|im_end|>\n{% endif %}{% endfor %}"
                         "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    tok.save_pretrained(str(tmp_path))
    with pytest.raises(ChatTemplateError) as e:
        load_tokenizer(tmp_path)
    assert str(tmp_path / "chat_template.jinja") in str(e.value) and "no assistant turn" in str(e.value)


def test_a_template_whose_generation_prompt_is_not_a_prefix_is_refused():
    tok = family_tokenizer("qwen2")
    tok.chat_template = ("{% for m in messages %}[{{ m.role }}]{{ m.content }}<|im_end|>{% endfor %}"
                         "{% if add_generation_prompt %}<assistant>{% endif %}")
    with pytest.raises(ChatTemplateError, match="generation prompt"):
        check_chat_template(tok)


def test_a_tokenizer_without_a_template_is_refused(tmp_path):
    tok = family_tokenizer("qwen2")
    tok.chat_template = None
    tok.save_pretrained(str(tmp_path))
    with pytest.raises(ChatTemplateError, match="no chat template"):
        load_tokenizer(tmp_path)


def test_the_projects_own_template_masks_as_its_generation_tags_do(tmp_path):
    """The template-agnostic mask equals transformers' ``{% generation %}`` mask on the project's tokenizer."""
    from pretraining.data import sft_conversations
    from pretraining.tokenizer import train_tokenizer

    tok = train_tokenizer([c[1]["content"] for c in sft_conversations(200, 0, [1, 2, 3])], vocab_size=300)
    for conv in sft_conversations(20, 1, [1, 2, 3, 4, 5]):
        ref = tok.apply_chat_template(conv, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
        ids, mask = encode_conversation(tok, conv)
        assert ids == list(ref["input_ids"])[:len(ids)] and mask == list(ref["assistant_masks"])[:len(ids)]

"""Bad input a user brings stops a job at start-up, before Ray or any engine starts, with one line that
names the file, the row or field, and the rule: a broken checkpoint, a dataset row without the configured
field, a chat template without an assistant turn (``flywheel grpo``, ``sft``, ``dpo``, ``eval``)."""

from __future__ import annotations

import shutil

import pytest

from services.cli import main as flywheel
from tests.fixtures.tiny_checkpoint import build_family

TEMPLATE_WITHOUT_ASSISTANT = ("{% for m in messages %}{% if m.role != 'assistant' %}<|im_start|>{{ m.role }}\n"
                              "{{ m.content }}<|im_end|>\n{% endif %}{% endfor %}"
                              "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


@pytest.fixture(scope="module")
def qwen2(tmp_path_factory):
    return build_family("qwen2", tmp_path_factory.mktemp("startup") / "qwen2")


def _grpo(model, data, out, *extra) -> list[str]:
    stage = f"[{{data_file: '{data}', question_field: problem, answer_field: solution, steps: 1}}]"
    return ["grpo", "--model", str(model), "--output_dir", str(out), "--stages", stage, "--eval.enabled", "false",
            *extra]


def _run(argv, capsys) -> tuple[int, str]:
    code = flywheel(argv)
    err = capsys.readouterr().err
    return code, err


def test_a_broken_checkpoint_stops_grpo_naming_file_and_tensor(qwen2, byo_data, tmp_path, capsys):
    from safetensors.torch import load_file, save_file

    broken = tmp_path / "broken"
    shutil.copytree(qwen2, broken)
    state = load_file(str(broken / "model.safetensors"))
    gone = "model.layers.1.mlp.down_proj.weight"
    save_file({k: v for k, v in state.items() if k != gone}, str(broken / "model.safetensors"))
    code, err = _run(_grpo(broken, byo_data["math"], tmp_path / "out"), capsys)
    assert code == 2
    assert gone in err and "model.safetensors" in err and "missing" in err
    assert "Traceback" not in err and not (tmp_path / "out").exists()  # stopped before anything started


def test_a_row_without_the_configured_field_stops_grpo(qwen2, tmp_path, capsys):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"problem": "What is 1 + 1?", "solution": "\\boxed{2}"}] * 3 + [{"problem": "What is 2 + 2?"}]
    data = tmp_path / "math.parquet"
    pq.write_table(pa.Table.from_pylist(rows), str(data))
    code, err = _run(_grpo(qwen2, data, tmp_path / "out"), capsys)
    assert code == 2
    assert f"stages.0.data_file: {data}: row 3: 'solution' must be a non-empty string" in err


def test_a_template_without_an_assistant_turn_stops_every_command(qwen2, byo_data, tmp_path, capsys):
    bad = tmp_path / "no-assistant"
    shutil.copytree(qwen2, bad)
    (bad / "chat_template.jinja").write_text(TEMPLATE_WITHOUT_ASSISTANT)
    for argv in (_grpo(bad, byo_data["math"], tmp_path / "grpo"),
                 ["sft", "--init_from", str(bad), "--data_file", str(byo_data["sft"]), "--out_dir", str(tmp_path / "s")],
                 ["dpo", "--init_from", str(bad), "--data_file", str(byo_data["dpo"]), "--out_dir", str(tmp_path / "d")]):
        code, err = _run(argv, capsys)
        assert code == 2, (argv[0], err)
        assert f"{bad / 'chat_template.jinja'}: the chat template has no assistant turn" in err, (argv[0], err)


def test_eval_refuses_a_missing_field_naming_the_row(qwen2, byo_data, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        flywheel(["eval", "--checkpoint", str(qwen2), "--data_file", str(byo_data["math"]), "--num_problems", "2"])
    assert f"{byo_data['math']}: row 0: each row needs 'question' and 'answer'" in str(e.value)


def test_merge_compares_vocabularies_not_tokenizer_file_bytes(qwen2, tmp_path, capsys):
    """A tokenizer re-saved by transformers (its pre-tokenizer rewritten, no id changed) merges; another
    vocabulary is refused, naming both folders."""
    import json

    from transformers import AutoTokenizer

    resaved = tmp_path / "resaved"
    shutil.copytree(qwen2, resaved)
    AutoTokenizer.from_pretrained(qwen2).save_pretrained(str(resaved))
    assert (resaved / "tokenizer.json").read_text() != (qwen2 / "tokenizer.json").read_text()
    assert flywheel(["merge", "--checkpoints", f"[{qwen2}, {resaved}]", "--out_dir", str(tmp_path / "m")]) == 0
    other = tmp_path / "other"
    shutil.copytree(qwen2, other)
    tok = json.loads((other / "tokenizer.json").read_text())
    vocab = tok["model"]["vocab"]
    a, b = [k for k in vocab if len(k) == 1][:2]
    vocab[a], vocab[b] = vocab[b], vocab[a]
    (other / "tokenizer.json").write_text(json.dumps(tok))
    capsys.readouterr()
    assert flywheel(["merge", "--checkpoints", f"[{qwen2}, {other}]", "--out_dir", str(tmp_path / "m2")]) == 2
    assert f"cannot merge {other} with {qwen2}: their tokenizers differ" in capsys.readouterr().out

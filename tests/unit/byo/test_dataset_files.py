"""Dataset files as users bring them: JSONL, Parquet and ``datasets`` save_to_disk folders, with the
question/answer columns named in config (MATH's ``problem``/``solution``, GSM8K's ``#### N`` answers),
TRL's SFT ``messages`` and DPO ``prompt``/``chosen``/``rejected`` rows; every bad row is refused naming
the file, the row, the field and the rule."""

from __future__ import annotations

import json

import pytest

from pretraining.dataset_files import (DataFileError, read_conversations, read_preference_pairs, read_problems,
                                       read_rows)

MATH = [{"problem": "What is $1+1$?", "solution": "We add: $1+1=2$. So the answer is $\\boxed{2}$.", "level": 1},
        {"problem": "What is $2\\cdot 3$?", "solution": "$2\\cdot 3 = 6$, hence \\boxed{6}.", "level": 2}]
GSM8K = [{"question": "Ann has 3 pens and buys 4. How many?", "answer": "3 + 4 = <<3+4=7>>7\n#### 7"}]


def _jsonl(path, rows):
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def _parquet(path, rows):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(rows), str(path))
    return path


def _dataset(path, rows):
    import datasets

    datasets.Dataset.from_list(rows).save_to_disk(str(path))
    return path


@pytest.mark.parametrize("writer,name", [(_jsonl, "math.jsonl"), (_parquet, "math.parquet"), (_dataset, "math_ds")])
def test_math_style_problems_from_every_file_type(tmp_path, writer, name):
    path = writer(tmp_path / name, MATH)
    probs = read_problems(path, question_field="problem", answer_field="solution")
    assert [(p.question, p.answer) for p in probs] == [(r["problem"], r["solution"]) for r in MATH]


def test_gsm8k_answers_are_kept_whole_for_the_verifier(tmp_path):
    [p] = read_problems(_jsonl(tmp_path / "gsm8k.jsonl", GSM8K))
    assert p.answer.endswith("#### 7")


def test_a_missing_field_names_file_row_field_and_rule(tmp_path):
    path = _parquet(tmp_path / "math.parquet", MATH)
    with pytest.raises(DataFileError) as e:
        read_problems(path)  # default fields question/answer: not in a MATH-style file
    msg = str(e.value)
    assert f"{path}: row 0" in msg and "'question' and 'answer'" in msg and "question_field" in msg
    assert "problem" in msg  # the columns the row does have


def test_a_null_answer_in_a_parquet_row_is_named(tmp_path):
    path = _parquet(tmp_path / "p.parquet", [{"q": "a?", "a": "1"}, {"q": "b?", "a": None}])
    with pytest.raises(DataFileError, match=r"p\.parquet: row 1: 'a' must be a non-empty string or a number"):
        read_problems(path, "q", "a")


def test_a_datasetdict_folder_asks_for_one_split(tmp_path):
    import datasets

    datasets.DatasetDict({"train": datasets.Dataset.from_list(MATH),
                          "test": datasets.Dataset.from_list(MATH)}).save_to_disk(str(tmp_path / "dd"))
    with pytest.raises(DataFileError, match=r"splits \['test', 'train'\]; give one split's folder"):
        read_problems(tmp_path / "dd", "problem", "solution")
    assert len(read_problems(tmp_path / "dd" / "train", "problem", "solution")) == 2


def test_unknown_types_and_unreadable_files_are_named(tmp_path):
    (tmp_path / "x.csv").write_text("a,b\n")
    with pytest.raises(DataFileError, match=r"x\.csv: unsupported data file type '.csv'"):
        list(read_rows(tmp_path / "x.csv"))
    (tmp_path / "bad.parquet").write_bytes(b"not parquet")
    with pytest.raises(DataFileError, match=r"bad\.parquet: not a readable Parquet file"):
        list(read_rows(tmp_path / "bad.parquet"))
    with pytest.raises(FileNotFoundError, match="nope.parquet"):
        list(read_rows(tmp_path / "nope.parquet"))


def test_sft_messages_rows(tmp_path):
    conv = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "1+1?"},
            {"role": "assistant", "content": "\\boxed{2}"}]
    path = _dataset(tmp_path / "sft", [{"messages": conv}])
    assert read_conversations(path) == [conv]
    bad = _jsonl(tmp_path / "bad.jsonl", [{"messages": conv}, {"messages": conv[:2]}])
    with pytest.raises(DataFileError, match=r"bad\.jsonl:2: 'messages' has no assistant message"):
        read_conversations(bad)
    wrong_role = _jsonl(tmp_path / "role.jsonl", [{"messages": [{"role": "bot", "content": "x"}]}])
    with pytest.raises(DataFileError, match=r"role\.jsonl:1: 'messages'\[0\] must be \{role: one of"):
        read_conversations(wrong_role)


def test_preference_pairs_standard_conversational_and_implicit_prompt(tmp_path):
    user = [{"role": "user", "content": "1+1?"}]
    good, bad = {"role": "assistant", "content": "\\boxed{2}"}, {"role": "assistant", "content": "\\boxed{3}"}
    rows = [{"prompt": "1+1?", "chosen": "\\boxed{2}", "rejected": "\\boxed{3}"},
            {"prompt": user, "chosen": [good], "rejected": [bad]},
            {"chosen": user + [good], "rejected": user + [bad]}]
    pairs = read_preference_pairs(_jsonl(tmp_path / "pairs.jsonl", rows))
    assert pairs[0] == {"prompt": "1+1?", "chosen": "\\boxed{2}", "rejected": "\\boxed{3}"}
    assert pairs[1] == pairs[2] == {"prompt": user, "chosen": "\\boxed{2}", "rejected": "\\boxed{3}"}
    with pytest.raises(DataFileError, match=r"pairs2\.jsonl:1: each row needs 'chosen' and 'rejected'"):
        read_preference_pairs(_jsonl(tmp_path / "pairs2.jsonl", [{"prompt": "q", "chosen": "a"}]))

"""Packing and loss masks against hand-built examples."""

from __future__ import annotations

import pytest

from pretraining.packing import IGNORE, pack_best_fit, pack_stream, pad_rows, real_token_share


def test_pack_stream_fills_rows_and_restarts_positions_per_document():
    rows = pack_stream([[1, 2, 3], [4, 5], [6, 7, 8, 9]], seq_len=4, pad_id=0)
    assert [r.input_ids for r in rows] == [[1, 2, 3, 4], [5, 6, 7, 8], [9, 0, 0, 0]]
    assert [r.position_ids for r in rows] == [[0, 1, 2, 0], [0, 0, 1, 2], [0, 0, 1, 2]]
    # a target never crosses a document (or piece) boundary
    assert [r.labels for r in rows] == [[2, 3, IGNORE, IGNORE], [IGNORE, 7, 8, IGNORE], [IGNORE] * 4]
    assert real_token_share(rows) == 9 / 12


def test_best_fit_decreasing_keeps_sequences_whole_and_fills_tightly():
    seqs = [([i] * n, [1] * n) for i, n in enumerate([5, 3, 4, 2, 1, 6], start=1)]
    rows = pack_best_fit(seqs, seq_len=7, pad_id=0)
    assert len(rows) == 3  # 21 tokens in 3 rows of 7: a perfect packing
    assert real_token_share(rows) == 1.0
    for r in rows:
        docs, cur = [], []
        for tok, pos in zip(r.input_ids, r.position_ids):
            if pos == 0 and cur:
                docs.append(cur)
                cur = []
            cur.append(tok)
        docs.append(cur)
        for d in docs:
            assert len(set(d)) == 1 and len(d) == [5, 3, 4, 2, 1, 6][d[0] - 1]  # whole, unsplit


def test_loss_mask_keeps_only_marked_targets():
    # prompt tokens 10 11 12 (mask 0), completion 20 21 (mask 1): targets are 20 and 21 only
    rows = pad_rows([([10, 11, 12, 20, 21], [0, 0, 0, 1, 1])], seq_len=6, pad_id=0)
    assert rows[0].labels == [IGNORE, IGNORE, 20, 21, IGNORE, IGNORE]


def test_too_long_sequence_is_a_clear_error():
    with pytest.raises(ValueError, match="longer than seq_len=4"):
        pack_best_fit([([1] * 5, [1] * 5)], seq_len=4, pad_id=0)
    with pytest.raises(ValueError, match="longer than seq_len=4"):
        pad_rows([([1] * 5, None)], seq_len=4, pad_id=0)


def test_sft_loss_mask_covers_assistant_tokens_only(tokenizer):
    from pretraining.chat import encode_conversation

    msgs = [{"role": "user", "content": "What is 2 + 3?"}, {"role": "assistant", "content": "2 + 3 = 5."}]
    ids, mask = encode_conversation(tokenizer, msgs)
    assert tokenizer.decode([t for t, m in zip(ids, mask) if m]) == "2 + 3 = 5.<|im_end|>"
    assert "What is" in tokenizer.decode([t for t, m in zip(ids, mask) if not m])
    with pytest.raises(ValueError, match="no assistant tokens"):
        encode_conversation(tokenizer, msgs[:1])

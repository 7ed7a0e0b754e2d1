"""Rows for training: sequence packing with intra-document masking, best-fit-decreasing, padding.

A row is ``input_ids``, ``position_ids`` and ``labels`` of one length. Labels are already aligned
(``labels[t]`` is the target for position ``t``; -100 means no loss), so losses need no shift.

Intra-document masking: positions restart at 0 at every document, and the model (transformers'
``create_causal_mask`` with ``attention_mask=None``) turns position resets into a block-diagonal causal
mask, so a token never attends across documents. Padding at the end of a packed row is its own
segment with no loss.
"""

from __future__ import annotations

from dataclasses import dataclass, field

IGNORE = -100


@dataclass
class Row:
    input_ids: list[int] = field(default_factory=list)
    position_ids: list[int] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    n_real: int = 0
    """Non-padding tokens."""

    def add(self, ids: list[int], loss_mask: list[int] | None = None) -> None:
        """Append one document; ``loss_mask[t]`` says whether token ``t`` is a target (predicted)."""
        self.input_ids += ids
        self.position_ids += list(range(len(ids)))
        targets = ids[1:] + [IGNORE]
        if loss_mask is not None:
            targets = [t if m else IGNORE for t, m in zip(targets, loss_mask[1:] + [0])]
        self.labels += targets
        self.n_real += len(ids)

    def pad_to(self, length: int, pad_id: int) -> "Row":
        n = length - len(self.input_ids)
        if n < 0:
            raise ValueError(f"row of {len(self.input_ids)} tokens is longer than {length}")
        self.input_ids += [pad_id] * n
        self.position_ids += list(range(n))
        self.labels += [IGNORE] * n
        return self


def pack_stream(docs: list[list[int]], seq_len: int, pad_id: int) -> list[Row]:
    """Pretraining packing: documents in order, split at row ends (each piece restarts its positions).

    Every row is full except possibly the last, so padding is at most one row's worth.
    """
    rows, cur = [], Row()
    for doc in docs:
        while doc:
            room = seq_len - len(cur.input_ids)
            piece, doc = doc[:room], doc[room:]
            cur.add(piece)
            if len(cur.input_ids) == seq_len:
                rows.append(cur)
                cur = Row()
    if cur.input_ids:
        rows.append(cur.pad_to(seq_len, pad_id))
    return rows


def pack_best_fit(seqs: list[tuple[list[int], list[int]]], seq_len: int, pad_id: int) -> list[Row]:
    """SFT packing: best-fit-decreasing bins of whole sequences ``(ids, loss_mask)``; none is split."""
    too_long = [(i, len(ids)) for i, (ids, _) in enumerate(seqs) if len(ids) > seq_len]
    if too_long:
        i, n = too_long[0]
        raise ValueError(f"sequence {i} has {n} tokens, longer than seq_len={seq_len} "
                         f"({len(too_long)} such sequences); raise seq_len or drop them")
    order = sorted(range(len(seqs)), key=lambda i: -len(seqs[i][0]))
    bins: list[Row] = []
    free: list[int] = []
    for i in order:
        ids, mask = seqs[i]
        best = -1
        for b, room in enumerate(free):  # tightest bin that still fits
            if room >= len(ids) and (best < 0 or room < free[best]):
                best = b
                if room == len(ids):
                    break
        if best < 0:
            bins.append(Row())
            free.append(seq_len)
            best = len(bins) - 1
        bins[best].add(ids, mask)
        free[best] -= len(ids)
    return [r.pad_to(seq_len, pad_id) for r in bins]


def pad_rows(seqs: list[tuple[list[int], list[int] | None]], seq_len: int, pad_id: int) -> list[Row]:
    """No packing: one sequence per row, right-padded to ``seq_len`` (the baseline packing beats)."""
    rows = []
    for i, (ids, mask) in enumerate(seqs):
        if len(ids) > seq_len:
            raise ValueError(f"sequence {i} has {len(ids)} tokens, longer than seq_len={seq_len}")
        r = Row()
        r.add(ids, mask)
        rows.append(r.pad_to(seq_len, pad_id))
    return rows


def collate(rows: list[Row], packed: bool):
    """A batch dict of tensors. Packed rows pass ``position_ids`` (document masking); padded rows an
    ``attention_mask``."""
    import torch

    batch = {"input_ids": torch.tensor([r.input_ids for r in rows]),
             "labels": torch.tensor([r.labels for r in rows])}
    if packed:
        batch["position_ids"] = torch.tensor([r.position_ids for r in rows])
    else:
        batch["attention_mask"] = torch.tensor([[1] * r.n_real + [0] * (len(r.input_ids) - r.n_real) for r in rows])
    return batch


def real_token_share(rows: list[Row]) -> float:
    """Fraction of row tokens that are not padding."""
    total = sum(len(r.input_ids) for r in rows)
    return sum(r.n_real for r in rows) / total if total else 0.0

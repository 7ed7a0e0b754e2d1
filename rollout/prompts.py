"""``PromptSource``: a Ray actor holding a queue of prompt dicts that rollout workers pull from.

A prompt dict has ``prompt_id``, ``prompt_token_ids`` or ``text``, ``gold`` and optionally ``stage``.
``next(k, lessee=None)`` hands out up to ``k`` prompts (an empty list means nothing right now). When
a ``lessee`` (a worker id) is given, the prompts stay leased to it until ``release(lessee, ids)``; if
the worker dies, ``requeue_lessee(lessee)`` puts its unfinished prompts back at the head of the
queue, so nothing is lost. The class is plain Python (testable without Ray); use
``ray.remote(PromptSource)`` or :func:`create_prompt_source`.
"""

from __future__ import annotations

from collections import deque


class PromptSource:
    """FIFO of prompt dicts with per-worker leases."""

    def __init__(self, prompts: list[dict] | None = None, epochs: int = 1) -> None:
        self._queue: deque[dict] = deque()
        self._leases: dict[str, dict[str, dict]] = {}
        self._epochs_left = max(0, epochs - 1)
        self._epoch_prompts: list[dict] = []
        self._closed = False
        self.handed_out = 0
        if prompts:
            self.add(prompts)

    def add(self, prompts: list[dict]) -> int:
        """Append prompts; returns the queue depth."""
        for p in prompts:
            if "prompt_id" not in p:
                raise ValueError(f"prompt without 'prompt_id': {sorted(p)}")
            if not p.get("prompt_token_ids") and not p.get("text"):
                raise ValueError(f"prompt {p['prompt_id']!r} has neither 'prompt_token_ids' nor 'text'")
            self._queue.append(dict(p))
            self._epoch_prompts.append(dict(p))
        return len(self._queue)

    def next(self, k: int, lessee: str | None = None) -> list[dict]:
        """Up to ``k`` prompts (``[]`` when empty), leased to ``lessee`` when given."""
        if not self._queue and self._epochs_left > 0:
            self._epochs_left -= 1
            self._queue.extend(dict(p) for p in self._epoch_prompts)
        out = [self._queue.popleft() for _ in range(min(k, len(self._queue)))]
        if lessee is not None:
            held = self._leases.setdefault(lessee, {})
            for p in out:
                held[str(p["prompt_id"])] = p
        self.handed_out += len(out)
        return out

    def release(self, lessee: str, prompt_ids: list[str]) -> None:
        """The lessee finished these prompts (their groups reached the sink)."""
        held = self._leases.get(lessee, {})
        for pid in prompt_ids:
            held.pop(str(pid), None)

    def requeue(self, prompts: list[dict]) -> int:
        """Put prompts back at the head of the queue (e.g. from a dead worker); returns the depth."""
        for p in reversed(prompts):
            self._queue.appendleft(dict(p))
        return len(self._queue)

    def requeue_lessee(self, lessee: str) -> int:
        """Re-queue everything still leased to ``lessee``; returns how many prompts came back."""
        held = self._leases.pop(lessee, {})
        self.requeue(list(held.values()))
        return len(held)

    def leased(self, lessee: str | None = None) -> int:
        if lessee is not None:
            return len(self._leases.get(lessee, {}))
        return sum(len(v) for v in self._leases.values())

    def depth(self) -> int:
        return len(self._queue)

    def done(self) -> bool:
        """True when nothing is queued, leased or left for later epochs."""
        return not self._queue and self.leased() == 0 and self._epochs_left == 0


class GroupSink:
    """A minimal sink actor: collects groups pushed by workers (``put``) for a consumer to ``take``."""

    def __init__(self) -> None:
        self._groups: list[dict] = []
        self.total = 0

    def put(self, groups: list[dict]) -> int:
        self._groups.extend(groups)
        self.total += len(groups)
        return self.total

    def take(self, max_items: int | None = None) -> list[dict]:
        n = len(self._groups) if max_items is None else min(max_items, len(self._groups))
        out, self._groups = self._groups[:n], self._groups[n:]
        return out

    def count(self) -> int:
        return self.total


def create_prompt_source(prompts: list[dict] | None = None, epochs: int = 1, **options):
    """Start a :class:`PromptSource` actor (``options`` go to ``ray.remote(...).options``)."""
    import ray

    return ray.remote(PromptSource).options(num_cpus=0, **options).remote(prompts, epochs)

"""The vLLM worker extension that loads new weights in place (runs inside vLLM's worker process).

vLLM mixes this class into its worker (``worker_extension_cls``); the rollout worker reaches it with
``AsyncLLM.collective_rpc("flywheel_reload_...")``. Loading goes through
``model_runner.reload_weights(weights_iterator=...)``, which re-applies vLLM's own weight
processing (loading into ``model.load_weights`` directly breaks after vLLM's CPU repacking).
Method names carry a ``flywheel_`` prefix so they never clash with vLLM's weight-transfer API
(``update_weights`` & co.).

Kept free of heavy module-level imports: vLLM imports it by name in every worker.
"""

from __future__ import annotations


class WeightReloadExtension:
    """Worker-side entry points for in-place weight reload."""

    def flywheel_reload_tensors(self, named_tensors: dict) -> int:
        """Load ``{name: CPU tensor}`` (shipped through vLLM's msgpack IPC); returns how many tensors."""
        self.model_runner.reload_weights(weights_iterator=iter(named_tensors.items()))
        return len(named_tensors)

    def flywheel_reload_file(self, path: str) -> int:
        """Load a safetensors file (e.g. in ``/dev/shm`` or on shared storage); returns how many tensors."""
        from safetensors import safe_open

        with safe_open(path, framework="pt", device="cpu") as f:
            names = list(f.keys())
            self.model_runner.reload_weights(weights_iterator=((n, f.get_tensor(n)) for n in names))
        return len(names)

    def flywheel_parameter_names(self) -> list[str]:
        """The checkpoint-format parameter names the model accepts (for validating an update)."""
        return [n for n, _ in self.model_runner.get_model().named_parameters()]

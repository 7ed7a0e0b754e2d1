"""The vLLM worker extension that loads new weights in place (runs inside vLLM's worker process).

vLLM mixes this class into its worker (``worker_extension_cls``); the rollout worker reaches it with
``AsyncLLM.collective_rpc("flywheel_reload_...")``. Loading goes through
``model_runner.reload_weights(weights_iterator=...)``, which re-applies vLLM's own weight
processing (loading into ``model.load_weights`` directly breaks after vLLM's CPU repacking).
Method names carry a ``flywheel_`` prefix so they never clash with vLLM's weight-transfer API
(``update_weights`` & co.). Tensors cannot travel as ``collective_rpc`` arguments through vLLM's
multiprocess executor ("cannot pickle memoryview"), so updates arrive as safetensors files: in
``/dev/shm`` (shared memory, no disk) for the CPU object-store transport, or on shared storage for
the service's ``/v1/weights``.

Kept free of heavy module-level imports: vLLM imports it by name in every worker.
"""

from __future__ import annotations


class WeightReloadExtension:
    """Worker-side entry points for in-place weight reload."""

    def flywheel_reload_files(self, paths: list[str]) -> int:
        """Load safetensors files (in ``/dev/shm`` or on shared storage) in one reload; returns tensor count."""
        from safetensors import safe_open

        count = [0]

        def tensors():
            for path in paths:
                with safe_open(path, framework="pt", device="cpu") as f:
                    for name in f.keys():
                        count[0] += 1
                        yield name, f.get_tensor(name)

        self.model_runner.reload_weights(weights_iterator=tensors())
        return count[0]

    def flywheel_parameter_names(self) -> list[str]:
        """The checkpoint-format parameter names the model accepts (for validating an update)."""
        return [n for n, _ in self.model_runner.get_model().named_parameters()]

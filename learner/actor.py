"""The FSDP2 learner: a group of Ray actors training a Hugging Face causal LM with the GRPO-family loss.

``LearnerWorker`` is one rank (a plain class, usable in-process for tests); ``Learner`` creates
``world_size`` of them as Ray actors, wires their process group (gloo over an explicit CPU mesh on CPU,
NCCL on GPU) and fans every call out to all ranks.

Per rank: ``AutoModelForCausalLM`` from a checkpoint folder, sharded by ``pretraining.distributed``
(``fully_shard`` on every decoder block and the root, bf16 ``MixedPrecisionPolicy`` with fp32 reduction
on GPU), activation checkpointing (by default from a model size on), AdamW with the trainers' parameter
groups (``pretraining.optim``) and linear LR warmup, padding-free micro-batches (by sequence count or
token budget, ``learner.batching``), log-probs chunked over the vocabulary at completion positions only
(``learner.logprobs``), gradient accumulation with loss denominators taken over the whole optimizer
step (``learner.update``: N ranks x M micro-batches give the one-big-batch update), global gradient norm
clipping.

The policy version counts the ``train_step`` calls that changed the weights (plus the starting
version), not optimizer steps: the job publishes ``full_state_dict()`` under ``metrics["version"]``
once per ``train_step``, and staleness (``loss.max_staleness``) is measured in published policies, so a
batch cut into several optimizer steps (PPO mini-batches) does not make in-flight samples look older.

Checkpoints (``save_checkpoint``): an HF folder (``pretraining.checkpoint.write_hf_folder``:
``model.safetensors`` + config + tokenizer files, so vLLM and transformers load it unchanged) plus the
resume format pretraining uses too, ``training_state.pt`` (full optimizer state by parameter name,
scheduler, step, RNG, and the learner's version and loss config; loaded with ``weights_only=True``), and
``extra.msgpack`` (caller state such as stage, data position and unconsumed experience). Full (not
sharded) state keeps the folder independent of the world size; every rank reads it on load, so a
multi-node learner needs the folder on shared storage.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import time
import warnings
from datetime import timedelta
from pathlib import Path
from typing import Any

from learner.config import LearnerConfig, LossConfig

log = logging.getLogger(__name__)

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


class LearnerWorker:
    """One learner rank. Call ``setup(master_addr, master_port)`` on every rank before anything else."""

    def __init__(self, cfg: dict | LearnerConfig, loss: dict | LossConfig, checkpoint_path: str, rank: int,
                 ref_checkpoint_path: str | None = None, initial_version: int = 0):
        self.cfg = cfg if isinstance(cfg, LearnerConfig) else LearnerConfig.model_validate(cfg)
        self.loss_cfg = loss if isinstance(loss, LossConfig) else LossConfig.model_validate(loss)
        self.checkpoint_path = str(checkpoint_path)
        self.ref_checkpoint_path = str(ref_checkpoint_path or checkpoint_path)
        self.rank = rank
        self.world_size = self.cfg.world_size
        self.step = 0
        self.version = initial_version
        self.model = None
        # Learner starts the ranks with Ray's zero-copy torch tensors: what they return is only ever read
        # (the published state dict), so Ray's "read-only tensors only" warning says nothing here
        warnings.filterwarnings("ignore", message="Zero-copy tensor serialization is enabled")

    def rendezvous_address(self) -> tuple[str, int]:
        """This host's address and a free port, for rank 0 to host the process group."""
        import ray

        try:
            addr = ray.util.get_node_ip_address()
        except Exception:  # not inside Ray
            addr = "127.0.0.1"
        return addr, free_port()

    # ---- set-up -----------------------------------------------------------------------------------
    def setup(self, master_addr: str, master_port: int) -> dict:
        import torch
        import torch.distributed as dist
        from torch.distributed.device_mesh import init_device_mesh

        from pretraining.optim import build_optimizer

        os.environ.update(MASTER_ADDR=master_addr, MASTER_PORT=str(master_port), RANK=str(self.rank),
                          WORLD_SIZE=str(self.world_size), LOCAL_RANK=str(self.rank))
        torch.manual_seed(self.cfg.seed)
        cuda = self.cfg.device == "cuda"
        if cuda:
            if not torch.cuda.is_available():
                raise RuntimeError("learner.device is 'cuda' but torch sees no CUDA device on this actor")
            self.device = torch.device("cuda", self.rank % torch.cuda.device_count())
            torch.cuda.set_device(self.device)
        else:
            self.device = torch.device("cpu")
        if not dist.is_initialized():
            kw = {"device_id": self.device} if cuda else {}
            dist.init_process_group("nccl" if cuda else "gloo", rank=self.rank, world_size=self.world_size,
                                    timeout=timedelta(seconds=self.cfg.timeout_s), **kw)
        self.mesh = init_device_mesh("cuda" if cuda else "cpu", (self.world_size,))
        self.model = self._build_model(self.checkpoint_path, trainable=True)
        self.ref_model = self._build_model(self.ref_checkpoint_path, trainable=False) if self.loss_cfg.kl_coef > 0 else None
        self.optimizer = build_optimizer(self.model, self.cfg.optim)
        warm = self.cfg.warmup_steps
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: min(1.0, (s + 1) / warm) if warm > 0 else 1.0)
        self.pad_id = int(getattr(self.model.config, "pad_token_id", None) or 0)
        n_params = sum(p.numel() for p in self.model.parameters())
        log.info("learner rank %d/%d ready on %s: %d parameters", self.rank, self.world_size, self.device, n_params)
        return {"rank": self.rank, "device": str(self.device), "parameters": n_params}

    def _build_model(self, path: str, trainable: bool):
        if not Path(path, "config.json").is_file():
            raise FileNotFoundError(f"learner rank {self.rank}: checkpoint {path!r} has no config.json "
                                    f"(not an HF folder, or not visible on this node)")
        import torch
        from transformers import AutoModelForCausalLM

        from learner.packed_attention import register
        from pretraining.checkpoint import check_weights
        from pretraining.distributed import shard_blocks

        check_weights(path)  # transformers would re-initialise a missing tensor at random, silently

        # attention per sequence inside packed rows (no row x row mask)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation=register())
        model.config.use_cache = False
        if trainable and self._activation_checkpointing(model):
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        shard_blocks(model, self.mesh, bf16=self.cfg.device == "cuda" and self.cfg.mixed_precision)
        if trainable:
            model.train()
        else:
            model.eval()
            model.requires_grad_(False)
        return model

    def _activation_checkpointing(self, model) -> bool:
        setting = self.cfg.activation_checkpointing
        if setting == "auto":
            return sum(p.numel() for p in model.parameters()) >= self.cfg.activation_checkpointing_min_params
        return bool(setting)

    def set_loss_config(self, loss: dict | LossConfig) -> None:
        """Stage overrides of the objective (clip, aggregation, KL, ...)."""
        new = loss if isinstance(loss, LossConfig) else LossConfig.model_validate(loss)
        if new.kl_coef > 0 and self.ref_model is None:
            self.ref_model = self._build_model(self.ref_checkpoint_path, trainable=False)
        self.loss_cfg = new

    def set_lr(self, lr: float) -> None:
        """Change the peak LR (e.g. per stage); warmup still scales it, ``optim.lr_scale`` still multiplies it."""
        from pretraining.optim import set_base_lr

        set_base_lr(self.optimizer, self.scheduler, lr)

    # ---- training ---------------------------------------------------------------------------------
    def _logprobs(self, model, batch: dict, entropy_grad: bool = False):
        """Completion-token log-probs and entropies ``(sequences, tokens)`` of ``model`` at the rollout
        temperature (the distribution the engine sampled from), chunked over the vocabulary."""
        from learner.logprobs import completion_logprobs

        return completion_logprobs(model, batch, temperature=self.loss_cfg.temperature,
                                   chunk_mib=self.cfg.logits_chunk_mib, entropy_grad=entropy_grad)

    def _all_reduce(self, t):
        """Sum a small CPU tensor over ranks (through the device: NCCL reduces CUDA tensors only)."""
        import torch.distributed as dist

        t = t.to(self.device)
        dist.all_reduce(t)
        return t.cpu()

    def train_step(self, groups: list) -> dict[str, Any]:
        """One batch of groups -> one or more optimizer steps; returns metrics (same on every rank)."""
        import torch

        from learner.batching import collate, sequences_from_groups, shard_steps
        from learner.update import StepTotals, micro_batch_backward, on_device, step_denominators

        t0 = time.perf_counter()
        seqs, stats = sequences_from_groups(groups, self.loss_cfg, self.version)
        if not seqs:
            return {"skipped": True, "optimizer_steps": 0, "version": self.version, "step": self.step,
                    **stats.as_metrics()}
        steps = shard_steps(seqs, self.cfg.micro_batch_size, self.cfg.grad_accum, self.world_size,
                            max_tokens=self.cfg.max_tokens_per_micro_batch)
        all_batches = [[collate(m, self.pad_id, packed=self.cfg.pack_sequences) for m in step[self.rank]]
                       for step in steps]
        if len(steps) > 1:  # several optimizer steps on one batch: pi_old = the weights before the first
            with torch.no_grad():
                for b in (b for batches in all_batches for b in batches):
                    b["old_logprobs"] = self._logprobs(self.model, on_device(b, self.device))[0].cpu()
        totals, grad_norms, lrs = StepTotals(), [], []
        for step, batches in zip(steps, all_batches):
            norm = step_denominators(batches, self._all_reduce)
            for b, seqs_in_b in zip(batches, step[self.rank]):
                b = on_device(b, self.device)
                parts = micro_batch_backward(self.model, self.ref_model, b, self.loss_cfg, norm, self._logprobs,
                                             grad_scale=self.world_size)  # FSDP averages gradients over ranks
                totals.add(parts, b, real=bool(seqs_in_b))
            gn = torch.nn.utils.clip_grad_norm_(self.model.parameters(),
                                                max_norm=self.cfg.optim.grad_clip or float("inf"))
            gn = gn.full_tensor() if hasattr(gn, "full_tensor") else gn
            grad_norms.append(float(gn))
            lrs.append(self.optimizer.param_groups[0]["lr"])
            self.optimizer.step()
            self.scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
            self.step += 1
        self.version += 1
        totals = totals.all_reduced(self._all_reduce)
        elapsed = time.perf_counter() - t0
        return {**totals.metrics(len(steps)), "grad_norm": sum(grad_norms) / len(grad_norms), "lr": lrs[-1],
                "optimizer_steps": len(steps), "train_tokens_per_s": totals.train_tokens / elapsed,
                "train_step_s": elapsed, "step": self.step, "version": self.version, "skipped": False,
                **stats.as_metrics()}

    # ---- weights and checkpoints ------------------------------------------------------------------
    def full_state_dict(self, dtype: str | None = None, drop_tied: bool = False) -> dict:
        """The full (unsharded) model state on CPU, on rank 0 (other ranks return {}); a collective.

        ``dtype`` (e.g. ``"bfloat16"``) casts floating tensors, for publishing to a bf16 rollout engine.
        ``drop_tied`` leaves out ``lm_head.weight`` when it is tied to the embeddings: an inference
        engine (vLLM) has no such parameter to load, the embedding is the same tensor.
        """
        import torch

        from pretraining.checkpoint import drop_tied_head
        from pretraining.distributed import full_state_dict

        sd = full_state_dict(self.model)
        if self.rank != 0:
            return {}
        if drop_tied:
            sd = drop_tied_head(sd, self.model.config)
        if dtype is not None:
            dt = getattr(torch, dtype)
            sd = {k: v.to(dt) if v.is_floating_point() else v for k, v in sd.items()}
        return sd

    def save_checkpoint(self, directory: str, extra: dict | None = None) -> str:
        """Write model, optimizer, scheduler, step/version and ``extra`` (msgpack-able) to ``directory``.

        Written to ``<directory>.tmp`` and renamed, so a crash mid-save leaves the previous checkpoint.
        """
        import msgpack
        import torch.distributed as dist

        from pretraining.checkpoint import save_training_state, write_hf_folder
        from pretraining.distributed import full_optimizer_state

        model_sd = self.full_state_dict()
        optim_sd = full_optimizer_state(self.model, self.optimizer)
        final = Path(directory)
        if self.rank == 0:
            tmp = final.with_name(final.name + ".tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            write_hf_folder(model_sd, self.model.config, self.checkpoint_path, tmp)
            learner = {"version": self.version, "loss": self.loss_cfg.model_dump(), "world_size": self.world_size,
                       "source_checkpoint": self.checkpoint_path}
            save_training_state(tmp, optimizer=optim_sd, scheduler=self.scheduler, step=self.step, extra=learner)
            (tmp / "extra.msgpack").write_bytes(msgpack.packb(extra or {}, use_bin_type=True))
            shutil.rmtree(final, ignore_errors=True)
            os.replace(tmp, final)
            log.info("checkpoint step %d (version %d) -> %s", self.step, self.version, final)
        dist.barrier()
        return str(final)

    def load_checkpoint(self, directory: str) -> dict:
        """Restore what ``save_checkpoint`` wrote (any world size); returns its ``extra``."""
        import msgpack
        import torch.distributed as dist

        from pretraining.checkpoint import TRAINING_STATE, load_training_state, read_hf_weights, set_rng_state
        from pretraining.distributed import load_full_state

        d = Path(directory)
        for name in ("model.safetensors", TRAINING_STATE, "extra.msgpack"):
            if not (d / name).exists():
                raise FileNotFoundError(f"{d} is not a learner checkpoint: {name} is missing")
        state = load_training_state(d)
        load_full_state(self.model, self.optimizer, read_hf_weights(d), state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        set_rng_state(state["rng"])
        self.step, self.version = int(state["step"]), int(state["extra"]["version"])
        dist.barrier()
        return msgpack.unpackb((d / "extra.msgpack").read_bytes(), raw=False)

    def export_hf(self, directory: str, dtype: str | None = None) -> str:
        """An HF folder (weights, config, tokenizer files from the source checkpoint) for vLLM/transformers."""
        import torch.distributed as dist

        from pretraining.checkpoint import write_hf_folder

        sd = self.full_state_dict(dtype)
        if self.rank == 0:
            cfg = self.model.config
            if dtype is not None:
                cfg = type(cfg).from_dict(cfg.to_dict())
                cfg.dtype = dtype
            write_hf_folder(sd, cfg, self.checkpoint_path, directory)
        dist.barrier()
        return str(directory)

    def state(self) -> dict:
        return {"step": self.step, "version": self.version, "lr": self.optimizer.param_groups[0]["lr"],
                "loss": self.loss_cfg.model_dump()}

    def shutdown(self) -> None:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


class Learner:
    """``world_size`` ``LearnerWorker`` Ray actors acting as one learner.

    ``placement_group`` (optional) places rank r in bundle ``bundle_offset + r``; each rank reserves
    ``num_cpus_per_rank`` CPUs and, on ``cuda``, one GPU. Call ``ray.init`` first.
    """

    def __init__(self, cfg: LearnerConfig, checkpoint_path: str, loss: LossConfig | None = None,
                 ref_checkpoint_path: str | None = None, placement_group=None, bundle_offset: int = 0,
                 initial_version: int = 0):
        import ray
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        self.cfg = cfg
        loss = loss or LossConfig()
        worker_cls = ray.remote(LearnerWorker)
        self.workers = []
        for r in range(cfg.world_size):
            opts: dict[str, Any] = {"num_cpus": cfg.num_cpus_per_rank, "num_gpus": 1 if cfg.device == "cuda" else 0,
                                    # the published state dict (CPU, contiguous, detached) goes into the object
                                    # store so that readers map it instead of unpickling a copy of every tensor:
                                    # read-only views, which the fleet, the weight sender and the engines only read
                                    "runtime_env": {"env_vars": {"RAY_ENABLE_ZERO_COPY_TORCH_TENSORS": "1"}}}
            if placement_group is not None:
                opts["scheduling_strategy"] = PlacementGroupSchedulingStrategy(
                    placement_group=placement_group, placement_group_bundle_index=bundle_offset + r)
            self.workers.append(worker_cls.options(**opts).remote(
                cfg.model_dump(), loss.model_dump(), str(checkpoint_path), r, ref_checkpoint_path, initial_version))
        addr, port = ray.get(self.workers[0].rendezvous_address.remote())
        self.info = ray.get([w.setup.remote(addr, port) for w in self.workers])

    def _all(self, method: str, *args) -> list:
        import ray

        return ray.get([getattr(w, method).remote(*args) for w in self.workers])

    def train_step(self, groups: list) -> dict[str, Any]:
        """Train on ``groups`` (dicts or ``Group``s); every rank gets the whole list and takes its shard."""
        import ray

        groups = [g if isinstance(g, dict) else g.to_dict() for g in groups]
        return self._all("train_step", ray.put(groups))[0]

    def publish_weights(self, dtype: str | None = None):
        """The current weights as one :class:`rollout.weight_update.WeightUpdate`: the learner's version
        and the full state dict left in the Ray object store (rank 0's ObjectRef, not copied here; each
        rollout worker fetches it in ``load_weights(update)``). A tied ``lm_head.weight`` is left out (the
        engine loads the embedding once)."""
        import ray

        from rollout.weight_update import WeightUpdate

        ref = self._gather(dtype, drop_tied=True)
        version = int(ray.get(self.workers[0].state.remote())["version"])  # the weights just gathered are it
        return WeightUpdate(version, tensors=ref)

    def full_state_dict(self, dtype: str | None = None) -> dict:
        """The full model state (CPU tensors, HF parameter names) fetched into this process."""
        import ray

        return ray.get(self._gather(dtype, drop_tied=False))

    def _gather(self, dtype: str | None, drop_tied: bool):
        """Every rank joins the gather (a collective); returns rank 0's ObjectRef once it is ready."""
        import ray

        refs = [w.full_state_dict.remote(dtype, drop_tied) for w in self.workers]
        ray.get(refs[1:])
        ray.wait(refs[:1])
        return refs[0]

    def save_checkpoint(self, directory: str, extra: dict | None = None) -> str:
        return self._all("save_checkpoint", str(directory), extra or {})[0]

    def load_checkpoint(self, directory: str) -> dict:
        return self._all("load_checkpoint", str(directory))[0]

    def export_hf(self, directory: str, dtype: str | None = None) -> str:
        return self._all("export_hf", str(directory), dtype)[0]

    def set_loss_config(self, loss: LossConfig) -> None:
        self._all("set_loss_config", loss.model_dump())

    def set_lr(self, lr: float) -> None:
        self._all("set_lr", lr)

    def state(self) -> dict:
        return self._all("state")[0]

    @property
    def version(self) -> int:
        return self.state()["version"]

    def shutdown(self) -> None:
        import ray

        try:
            self._all("shutdown")
        finally:
            for w in self.workers:
                ray.kill(w)
            self.workers = []

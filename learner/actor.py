"""The FSDP2 learner: a group of Ray actors training a Hugging Face causal LM with the GRPO-family loss.

``LearnerWorker`` is one rank (a plain class, usable in-process for tests); ``Learner`` creates
``world_size`` of them as Ray actors, wires their process group (gloo over an explicit CPU mesh on CPU,
NCCL on GPU) and fans every call out to all ranks.

Per rank: ``AutoModelForCausalLM`` from a checkpoint folder, ``fully_shard`` on every decoder block and
the root (bf16 ``MixedPrecisionPolicy`` with fp32 reduction on GPU), optional activation checkpointing,
AdamW with linear LR warmup, gradient accumulation over micro-batches with loss denominators taken over
the whole optimizer step (so N ranks x M micro-batches give the one-big-batch update), global gradient
norm clipping.

The policy version counts the ``train_step`` calls that changed the weights (plus the starting
version), not optimizer steps: the job publishes ``full_state_dict()`` under ``metrics["version"]``
once per ``train_step``, and staleness (``loss.max_staleness``) is measured in published policies, so a
batch cut into several optimizer steps (PPO mini-batches) does not make in-flight samples look older.

Checkpoints (``save_checkpoint``): an HF folder (``model.safetensors`` + config + tokenizer files, so
vLLM and transformers load it unchanged) plus ``optimizer.pt`` (full optimizer state, loaded with
``weights_only=True``), ``trainer_state.json`` (step, version, scheduler, loss config) and
``extra.msgpack`` (caller state such as stage, data position and unconsumed experience). Full (not
sharded) state keeps the folder independent of the world size; every rank reads it on load, so a
multi-node learner needs the folder on shared storage.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

from learner.config import LearnerConfig, LossConfig

log = logging.getLogger(__name__)

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".msgpack")
WEIGHT_NAMES = {"model.safetensors.index.json", "pytorch_model.bin.index.json", "config.json",
                "trainer_state.json", "generation_config.json"}


def copy_tokenizer_files(src: str | Path, dst: str | Path) -> list[str]:
    """Copy the non-weight, non-config files of an HF folder (tokenizer, chat template, ...)."""
    src, dst = Path(src), Path(dst)
    copied = []
    for f in sorted(src.iterdir()):
        if f.is_file() and f.name not in WEIGHT_NAMES and not f.name.endswith(WEIGHT_SUFFIXES):
            shutil.copy2(f, dst / f.name)
            copied.append(f.name)
    return copied


def write_hf_folder(state: dict, model_config, source: str | Path, out: str | Path) -> None:
    """Write ``state`` (full, CPU) as an HF folder: model.safetensors, config.json, tokenizer files."""
    from safetensors.torch import save_file

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tied = bool(getattr(model_config, "tie_word_embeddings", False))
    tensors = {k: v.detach().contiguous().clone() for k, v in state.items()
               if not (tied and k == "lm_head.weight")}
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    model_config.save_pretrained(str(out))
    gen = Path(source) / "generation_config.json"
    if gen.is_file():
        shutil.copy2(gen, out / gen.name)
    copy_tokenizer_files(source, out)


def lr_scaled_groups(named_parameters, scales: dict[str, float], lr: float) -> list[dict]:
    """Optimizer parameter groups: one at ``lr`` plus one per ``scales`` pattern at ``lr * factor``.

    Patterns are fnmatch globs over parameter names, tried in order (the first match wins). A pattern
    that matches no parameter is an error naming it, so a typo does not silently train at the base lr.
    Each group carries its ``lr_scale`` (kept in the optimizer state, so a resumed run keeps it).
    """
    from fnmatch import fnmatchcase

    named = list(named_parameters)
    groups = {pattern: [] for pattern in scales}
    rest = []
    for name, p in named:
        hit = next((pat for pat in scales if fnmatchcase(name, pat)), None)
        (groups[hit] if hit is not None else rest).append(p)
    unmatched = [pat for pat, params in groups.items() if not params]
    if unmatched:
        sample = ", ".join(n for n, _ in named[:6])
        raise ValueError(f"learner.lr_scale: pattern(s) {unmatched} match no parameter (names look like: {sample}, ...)")
    out = [{"params": rest, "lr": lr, "lr_scale": 1.0}] if rest else []
    return out + [{"params": params, "lr": lr * scales[pat], "lr_scale": float(scales[pat])}
                  for pat, params in groups.items()]


def read_hf_weights(folder: str | Path) -> dict:
    """All tensors of an HF folder's safetensors files (single file or sharded)."""
    from safetensors.torch import load_file

    files = sorted(Path(folder).glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no *.safetensors in {folder}")
    state = {}
    for f in files:
        state.update(load_file(str(f)))
    return state


def decoder_blocks(model) -> list:
    """The modules to shard one by one: HF's ``_no_split_modules`` classes (the decoder layers)."""
    names = set(getattr(model, "_no_split_modules", None) or [])
    blocks = [m for m in model.modules() if type(m).__name__ in names]
    if not blocks:
        raise ValueError(f"{type(model).__name__}: found no decoder blocks to shard (_no_split_modules={names})")
    return blocks


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
        groups = lr_scaled_groups(self.model.named_parameters(), self.cfg.lr_scale, self.cfg.lr)
        self.optimizer = torch.optim.AdamW(groups, lr=self.cfg.lr, betas=tuple(self.cfg.betas),
                                           eps=self.cfg.eps, weight_decay=self.cfg.weight_decay)
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
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
        from transformers import AutoModelForCausalLM

        from pretraining.checkpoint import check_weights

        check_weights(path)  # transformers would re-initialise a missing tensor at random, silently

        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
        model.config.use_cache = False
        if trainable and self.cfg.activation_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        mp = MixedPrecisionPolicy()
        if self.cfg.device == "cuda" and self.cfg.mixed_precision:
            mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
        for block in decoder_blocks(model):
            fully_shard(block, mesh=self.mesh, mp_policy=mp)
        fully_shard(model, mesh=self.mesh, mp_policy=mp)
        if trainable:
            model.train()
        else:
            model.eval()
            model.requires_grad_(False)
        return model

    def set_loss_config(self, loss: dict | LossConfig) -> None:
        """Stage overrides of the objective (clip, aggregation, KL, ...)."""
        new = loss if isinstance(loss, LossConfig) else LossConfig.model_validate(loss)
        if new.kl_coef > 0 and self.ref_model is None:
            self.ref_model = self._build_model(self.ref_checkpoint_path, trainable=False)
        self.loss_cfg = new

    def set_lr(self, lr: float) -> None:
        """Change the peak LR (e.g. per stage); warmup still scales it."""
        groups = self.optimizer.param_groups
        new_bases = [lr * g.get("lr_scale", 1.0) for g in groups]
        for g, base, new in zip(groups, self.scheduler.base_lrs, new_bases):
            g["lr"] = g["lr"] / base * new if base else new
        self.scheduler.base_lrs = new_bases

    # ---- training ---------------------------------------------------------------------------------
    def _token_logprobs(self, model, batch: dict, with_entropy: bool):
        from learner.losses import token_entropy, token_logprobs

        ids = batch["input_ids"].to(self.device)
        logits = model(input_ids=ids, attention_mask=batch["attention_mask"].to(self.device)).logits[:, :-1]
        if self.loss_cfg.temperature != 1.0:  # the distribution the rollout engine sampled from
            logits = logits / self.loss_cfg.temperature
        logp = token_logprobs(logits, batch["targets"].to(self.device))
        if with_entropy:
            ent = token_entropy(logits)
        else:
            import torch

            with torch.no_grad():
                ent = token_entropy(logits.detach())
        return logp, ent

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
        from learner.losses import Normalizer, grpo_loss

        t0 = time.perf_counter()
        lc = self.loss_cfg
        seqs, stats = sequences_from_groups(groups, lc, self.version)
        steps = shard_steps(seqs, self.cfg.micro_batch_size, self.cfg.grad_accumulation, self.world_size)
        if not seqs:
            return {"skipped": True, "optimizer_steps": 0, "version": self.version, "step": self.step,
                    **stats.as_metrics()}
        all_batches = [[collate(m, self.pad_id) for m in step[self.rank]] for step in steps]
        if len(steps) > 1:  # several optimizer steps on one batch: pi_old = the weights before the first
            with torch.no_grad():
                for batches in all_batches:
                    for b in batches:
                        b["old_logprobs"] = self._token_logprobs(self.model, b, with_entropy=False)[0].cpu()
        sums = torch.zeros(9, dtype=torch.float64)
        grad_norms, lrs = [], []
        for step, batches in zip(steps, all_batches):
            counts = torch.tensor([sum(float((b["loss_mask"] > 0).sum()) for b in batches),
                                   sum(float((b["loss_mask"] > 0).any(-1).sum()) for b in batches),
                                   sum(float(b["attention_mask"].sum()) if len(m) else 0.0
                                       for b, m in zip(batches, step[self.rank]))], dtype=torch.float64)
            counts = self._all_reduce(counts)
            norm = Normalizer(tokens=float(counts[0]), sequences=float(counts[1]))
            for b in batches:
                logp, ent = self._token_logprobs(self.model, b, with_entropy=lc.entropy_coef != 0)
                old_lp = b["old_logprobs"].to(self.device) if "old_logprobs" in b else logp.detach()
                ref = None
                if self.ref_model is not None:
                    with torch.no_grad():
                        ref, _ = self._token_logprobs(self.ref_model, b, with_entropy=False)
                mask = b["loss_mask"].to(self.device)
                parts = grpo_loss(lc, logp, old_lp, b["behaviour_logprobs"].to(self.device),
                                  b["advantages"].to(self.device), mask, norm, ref_logprobs=ref, entropy=ent)
                (parts.loss * self.world_size).backward()  # FSDP averages gradients over ranks
                sums += torch.tensor([float(parts.loss.detach()), float(parts.policy), float(parts.kl),
                                      float(parts.entropy), float(parts.clip_fraction), float(parts.tis_mean),
                                      float(parts.ratio_mean), 0.0, 0.0], dtype=torch.float64)
            sums[7] += counts[0] / self.world_size  # all-reduced below, so divide here
            sums[8] += counts[2] / self.world_size
            gn = torch.nn.utils.clip_grad_norm_(self.model.parameters(),
                                                max_norm=self.cfg.grad_clip or float("inf"))
            gn = gn.full_tensor() if hasattr(gn, "full_tensor") else gn
            grad_norms.append(float(gn))
            lrs.append(self.optimizer.param_groups[0]["lr"])
            self.optimizer.step()
            self.scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
            self.step += 1
        self.version += 1
        sums = self._all_reduce(sums)
        tok = max(float(sums[7]), 1.0)
        elapsed = time.perf_counter() - t0
        return {
            "loss": float(sums[0]) / len(steps), "policy_loss": float(sums[1]) / tok, "kl": float(sums[2]) / tok,
            "entropy": float(sums[3]) / tok, "clip_fraction": float(sums[4]) / tok,
            "tis_weight_mean": float(sums[5]) / tok, "ratio_mean": float(sums[6]) / tok,
            "grad_norm": sum(grad_norms) / len(grad_norms), "lr": lrs[-1], "optimizer_steps": len(steps),
            "loss_tokens": int(sums[7]), "train_tokens": int(sums[8]),
            "train_tokens_per_s": float(sums[8]) / elapsed, "train_step_s": elapsed,
            "step": self.step, "version": self.version, "skipped": False, **stats.as_metrics(),
        }

    # ---- weights and checkpoints ------------------------------------------------------------------
    def full_state_dict(self, dtype: str | None = None, drop_tied: bool = False) -> dict:
        """The full (unsharded) model state on CPU, on rank 0 (other ranks return {}); a collective.

        ``dtype`` (e.g. ``"bfloat16"``) casts floating tensors, for publishing to a bf16 rollout engine.
        ``drop_tied`` leaves out ``lm_head.weight`` when it is tied to the embeddings: an inference
        engine (vLLM) has no such parameter to load, the embedding is the same tensor.
        """
        import torch
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        sd = get_model_state_dict(self.model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        if self.rank != 0:
            return {}
        if drop_tied and getattr(self.model.config, "tie_word_embeddings", False):
            sd.pop("lm_head.weight", None)
        if dtype is not None:
            dt = getattr(torch, dtype)
            sd = {k: v.to(dt) if v.is_floating_point() else v for k, v in sd.items()}
        return sd

    def save_checkpoint(self, directory: str, extra: dict | None = None) -> str:
        """Write model, optimizer, scheduler, step/version and ``extra`` (msgpack-able) to ``directory``.

        Written to ``<directory>.tmp`` and renamed, so a crash mid-save leaves the previous checkpoint.
        """
        import msgpack
        import torch
        import torch.distributed as dist
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

        full = StateDictOptions(full_state_dict=True, cpu_offload=True)
        model_sd = self.full_state_dict()
        optim_sd = get_optimizer_state_dict(self.model, self.optimizer, options=full)
        final = Path(directory)
        if self.rank == 0:
            tmp = final.with_name(final.name + ".tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            write_hf_folder(model_sd, self.model.config, self.checkpoint_path, tmp)
            torch.save(optim_sd, tmp / "optimizer.pt")
            state = {"step": self.step, "version": self.version, "scheduler": self.scheduler.state_dict(),
                     "loss": self.loss_cfg.model_dump(), "world_size": self.world_size,
                     "source_checkpoint": self.checkpoint_path}
            (tmp / "trainer_state.json").write_text(json.dumps(state, indent=1, default=str))
            (tmp / "extra.msgpack").write_bytes(msgpack.packb(extra or {}, use_bin_type=True))
            shutil.rmtree(final, ignore_errors=True)
            os.replace(tmp, final)
            log.info("checkpoint step %d (version %d) -> %s", self.step, self.version, final)
        dist.barrier()
        return str(final)

    def load_checkpoint(self, directory: str) -> dict:
        """Restore what ``save_checkpoint`` wrote (any world size); returns its ``extra``."""
        import msgpack
        import torch
        import torch.distributed as dist
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions, set_model_state_dict, set_optimizer_state_dict)

        d = Path(directory)
        for name in ("model.safetensors", "optimizer.pt", "trainer_state.json", "extra.msgpack"):
            if not (d / name).exists():
                raise FileNotFoundError(f"{d} is not a learner checkpoint: {name} is missing")
        model_sd = read_hf_weights(d)
        if getattr(self.model.config, "tie_word_embeddings", False) and "lm_head.weight" not in model_sd:
            emb = [k for k in model_sd if k.endswith("embed_tokens.weight")]
            if emb:
                model_sd["lm_head.weight"] = model_sd[emb[0]]
        full = StateDictOptions(full_state_dict=True)
        set_model_state_dict(self.model, model_sd, options=full)
        optim_sd = torch.load(d / "optimizer.pt", map_location="cpu", weights_only=True)
        set_optimizer_state_dict(self.model, self.optimizer, optim_sd, options=full)
        state = json.loads((d / "trainer_state.json").read_text())
        self.scheduler.load_state_dict(state["scheduler"])
        self.step, self.version = int(state["step"]), int(state["version"])
        dist.barrier()
        return msgpack.unpackb((d / "extra.msgpack").read_bytes(), raw=False)

    def export_hf(self, directory: str, dtype: str | None = None) -> str:
        """An HF folder (weights, config, tokenizer files from the source checkpoint) for vLLM/transformers."""
        import torch.distributed as dist

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
            opts: dict[str, Any] = {"num_cpus": cfg.num_cpus_per_rank, "num_gpus": 1 if cfg.device == "cuda" else 0}
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
        """Gather the full state dict and leave it in the Ray object store: returns rank 0's ObjectRef
        (pass it to each rollout worker's ``load_weights(version, ref)``) without copying it here. A
        tied ``lm_head.weight`` is left out (the engine loads the embedding once)."""
        return self._gather(dtype, drop_tied=True)

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

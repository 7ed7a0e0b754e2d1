"""The multi-stage asynchronous GRPO job: the ``ray job submit`` entrypoint.

    ray job submit --working-dir . -- python -m services.grpo_job --config configs/grpo_tiny.yaml
    flywheel grpo --config configs/grpo_tiny.yaml --stages.0.steps 5

What it does, in order:

1. joins the Ray cluster (or starts a local one), reserves a placement group (learner bundles and
   rollout bundles, custom resources from ``resources``);
2. starts the FSDP2 learner (``learner.actor.Learner``) from ``model`` (or resumes the latest checkpoint
   in ``output_dir``: weights, optimizer, schedule, stage, data position, unconsumed experience);
3. starts the experience stream (Ray queue or Redis Streams), the scoring sink with its verifier actors
   (``services.grpo_scoring``), and the rollout workers (vLLM, ``max_model_len`` follows the stage);
4. runs every declared stage: rollout workers generate continuously from a prompt source the driver
   tops up under the staleness bound (``services.grpo_schedule.prompts_to_issue``); the driver pulls
   scored groups, applies dynamic sampling, trains, and publishes the new weights as version v+1 to
   every worker without stopping generation (``load_weights`` pauses in-flight requests, keeps their
   KV cache, resumes). ``loss.max_staleness: 0`` waits for each update instead: synchronous on-policy
   training through the same code;
5. at each stage end: held-out accuracy (avg@k, pass@k, greedy), an HF export that vLLM and
   ``flywheel eval`` load unchanged, a checkpoint; at the end, PNG plots and ``summary.json``.

Per-step lines go to the log, every metric to ``<output_dir>/metrics.jsonl`` (with the ids of the
groups each step trained on, ``trained_groups``, and the worker restarts seen in it, ``worker_restarts``).

Faults (docs/grpo.md, "Faults"): a rollout worker that dies is rejoined by :class:`rollout.fleet.RolloutFleet`
(its prompts re-queued, Ray restarts it, it gets the current weights and resumes generating); a dead
verifier actor is absorbed by the pool's retries (``rewards.ray_pool``); a stopped job resumes from
its checkpoint without losing or repeating a rollout.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from services.grpo_data import (
    PromptCursor,
    check_job_inputs,
    heldout_problems,
    load_tokenizer,
    stage_problems,
    to_prompts,
)
from services.grpo_batch import BatchBuilder
from services.grpo_checkpoint import JobCheckpoints
from services.grpo_eval import evaluate_heldout
from rollout.fleet import RolloutFleet
from services.grpo_report import StepReport, write_plots
from services.grpo_schedule import (
    IdleClock,
    JobProgress,
    stage_stop_reason,
)
from services.job_config import GRPOJobConfig, stage_loss, stage_name, stage_reward

log = logging.getLogger("flywheel.grpo")


class GRPOJob:
    """One run of the job; ``run()`` returns the process exit code."""

    def __init__(self, cfg: GRPOJobConfig):
        self.cfg = cfg
        self.out = Path(cfg.output_dir).resolve()
        self.checkpoints = JobCheckpoints(self.out, cfg.checkpoint.keep_last)
        self.progress = JobProgress()
        self.buffer: list[dict[str, Any]] = []
        """Scored groups pulled from the experience stream but not trained on yet."""
        self.pending: list[dict[str, Any]] = []
        """Prompts issued but not returned at the last checkpoint (re-issued on resume)."""
        self.fleet: RolloutFleet | None = None
        self.learner_pg = self.rollout_pg = None
        self.learner = self.experience = self.sink = None
        self.worker_max_len = 0
        self.evals: list[dict[str, Any]] = []
        self.steps_this_run = 0
        self.worker_recoveries: list[dict[str, Any]] = []
        """Rollout workers rejoined after a death in this run (id, weight version loaded, seconds)."""
        self.scoring_stats: dict[str, Any] = {}
        """The scoring sink's counters at shutdown (verifier retries and outage included)."""

    # ---- set-up -------------------------------------------------------------------------------------
    def _connect_ray(self) -> None:
        import ray

        if ray.is_initialized():
            return
        address = self.cfg.ray_address or os.environ.get("RAY_ADDRESS") or "local"
        ray.init(address=address, log_to_driver=True, ignore_reinit_error=True)
        log.info("ray: %s", ray.cluster_resources())

    def _placement_groups(self):
        """Two placement groups (each all-or-nothing): one bundle per learner rank, one per rollout worker."""
        import ray
        from ray.util.placement_group import placement_group

        r, c = self.cfg.resources, self.cfg
        if not r.placement_group:
            return None, None
        gpu = 1.0 if c.learner.device == "cuda" else 0.0
        learner = {"CPU": c.learner.num_cpus_per_rank, "GPU": gpu, **r.learner_custom}
        rollout = {"CPU": c.rollout.num_cpus_per_worker, "GPU": c.rollout.num_gpus_per_worker,
                   **c.rollout.resources_per_worker}
        groups = []
        for role, bundle, n in (("learner", learner, c.learner.world_size), ("rollout", rollout, c.rollout.num_workers)):
            bundles = [{k: v for k, v in bundle.items() if v} for _ in range(n)]
            pg = placement_group(bundles, strategy=r.placement_strategy, name=f"grpo-{role}-{uuid.uuid4().hex[:8]}")
            ready, _ = ray.wait([pg.ready()], timeout=300)
            if not ready:
                raise RuntimeError(f"{role} placement group {bundles} does not fit the cluster "
                                   f"({ray.available_resources()}): lower the {role} resources or add nodes")
            groups.append(pg)
        return groups[0], groups[1]

    def _start_learner(self, resume: Path | None):
        from learner.actor import Learner

        c = self.cfg
        learner = Learner(c.learner, c.model, loss=stage_loss(c, self.progress.stage),
                          placement_group=self.learner_pg, bundle_offset=0)
        if resume is not None:
            extra = learner.load_checkpoint(str(resume)) or {}
            self.progress = JobProgress.from_dict(extra["progress"])
            self.buffer = list(extra.get("buffer", []))
            self.pending = list(extra.get("pending", []))
            self.evals = list(extra.get("evals", []))
            log.info("resumed %s: stage %d step %d version %d (%d buffered groups, %d prompts to re-issue)",
                     resume.name, self.progress.stage, self.progress.step_in_stage, self.progress.version,
                     len(self.buffer), len(self.pending))
        return learner

    def _start_workers(self, max_model_len: int) -> None:
        """(Re)start the rollout workers when the stage needs a longer ``max_model_len``; load current weights."""
        import ray

        from rollout.worker import create_workers

        if self.fleet is not None and self.worker_max_len >= max_model_len:
            return
        self._stop_workers()
        rc = self.cfg.rollout.model_copy(update={"model": self.cfg.model, "max_model_len": max_model_len})
        t0 = time.perf_counter()
        self.fleet = RolloutFleet(create_workers(rc, placement_group=self.rollout_pg), rc.max_in_flight,
                                  **self._weight_transport(rc))
        self.worker_max_len = max_model_len
        if self.progress.version > 0:  # carry the trained weights into the fresh engines
            self._publish(self.progress.version, wait=True)
        ray.get([w.get_version.remote() for w in self.fleet.workers])
        log.info("%d rollout worker(s) up (max_model_len %d) in %.1fs", len(self.fleet.workers), max_model_len,
                 time.perf_counter() - t0)

    def _stop_workers(self) -> None:
        if self.fleet is not None:
            self.worker_recoveries += self.fleet.recoveries
            self.fleet.kill()
            self.fleet = None

    def _weight_transport(self, rc) -> dict[str, Any]:
        """The fleet's weight transport: ``collective`` (``nccl`` is its GPU spelling) broadcasts from a
        sender on the learner's node (rank 0's placement bundle when there is one) into the engines, in
        the engines' dtype; over NCCL when the engines and the learner are on GPUs, gloo otherwise."""
        from rollout.weight_sync import group_backend

        if rc.weight_transport == "object_store":
            return {}
        backend = group_backend(rc.num_gpus_per_worker, self.cfg.learner.device)
        options: dict[str, Any] = {}
        if backend == "nccl":  # a GPU-less actor beside learner rank 0: keep the node's GPUs visible to it
            options["runtime_env"] = {"env_vars": {"RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0"}}
        if self.learner_pg is not None:
            from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

            options["scheduling_strategy"] = PlacementGroupSchedulingStrategy(
                placement_group=self.learner_pg, placement_group_bundle_index=0)
        return {"transport": "collective", "collective": {
            "bucket_mib": rc.weight_bucket_mib, "dtype": None if rc.dtype == "auto" else rc.dtype,
            "ranks_per_worker": rc.tensor_parallel_size, "broadcaster_options": options, "backend": backend}}

    def _publish(self, version: int, wait: bool) -> float:
        """Hand the learner's weight update (its tensors stay in the object store; workers fetch them) to
        every worker; ``version`` is what the job expects the learner to be at. Returns seconds to hand over."""
        t0 = time.perf_counter()
        self.fleet.wait_published()  # never pile updates up: the previous one must have landed
        update = self.learner.publish_weights(self.fleet.wire_dtype())  # collective: cast once, on the learner
        if update.version != version:
            raise RuntimeError(f"the learner published weights version {update.version}, the job expected {version}")
        self.fleet.publish(update, wait)
        return time.perf_counter() - t0

    # ---- the run ------------------------------------------------------------------------------------
    def run(self) -> int:

        c = self.cfg
        check_job_inputs(c)  # a broken checkpoint, template or data row stops the job now, not hours into it
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / "config.json").write_text(c.model_dump_json(indent=2))
        self._connect_ray()
        self.report = StepReport(self.out, c)
        try:
            self._setup()
            while not self.progress.finished:
                self._stage(self.progress.stage)
                if self._run_budget_spent():
                    log.info("stopped after %d steps this run (stop_after_steps); checkpointed at global step %d,"
                             " rerun the same command to resume", self.steps_this_run, self.progress.global_step)
                    return 0
            self._finish()
        finally:
            self.report.close()
            self._shutdown()
        return 0

    def _setup(self) -> None:
        import ray

        from services.grpo_scoring import ScoringSink

        c = self.cfg
        self.learner_pg, self.rollout_pg = self._placement_groups()
        self.learner = self._start_learner(self.checkpoints.latest() if c.checkpoint.resume else None)
        self.tokenizer = load_tokenizer(c.model)
        self.experience = self._start_experience()
        self.sink = ray.remote(num_cpus=0)(ScoringSink).remote(
            self.experience.sink, stage_reward(c, self.progress.stage).model_dump(),
            c.resources.verifier_actors, c.resources.verifier_cpus, self.progress.stage)
        self.heldout = (to_prompts(heldout_problems(c), self.tokenizer, -1, c.max_prompt_tokens, "heldout",
                                   c.system_prompt, c.prompt_template) if c.eval.enabled else [])

    def _finish(self) -> None:
        """Plots (over every step of the job, resumed runs included) and ``summary.json``."""
        c = self.cfg
        if c.plots:
            rows = [json.loads(x) for x in (self.out / "metrics.jsonl").read_text().splitlines() if x.strip()]
            write_plots(self.out, rows, self.evals, [stage_name(c, i) for i in range(len(c.stages))])
        summary = {"stages": self.progress.stop_reasons, "evals": self.evals,
                   "global_step": self.progress.global_step, "version": self.progress.version,
                   "worker_recoveries": self.worker_recoveries + (self.fleet.recoveries if self.fleet else [])}
        (self.out / "summary.json").write_text(json.dumps(summary, indent=2))
        log.info("done: %s", json.dumps(summary["evals"][-1] if self.evals else summary))

    def _shutdown(self) -> None:
        """Release every actor and placement group of this run (a ``ray job`` driver exiting does this
        anyway; an in-process run, like the benchmark's two, must not leak them)."""
        import ray
        from ray.util.placement_group import remove_placement_group

        self._stop_workers()
        for name in ("learner", "experience"):
            obj = getattr(self, name)
            if obj is not None:
                try:
                    obj.shutdown() if name == "learner" else obj.close()
                except Exception as e:  # the run's result is already on disk; report, do not mask it
                    log.warning("shutting down the %s failed: %s", name, e)
        if self.sink is not None:
            try:
                self.scoring_stats = ray.get(self.sink.stats.remote(), timeout=60)
                log.info("scoring: %s; worker recoveries: %s", self.scoring_stats, self.worker_recoveries)
            except Exception as e:  # noqa: BLE001 - only diagnostics are lost
                log.warning("scoring sink stats unavailable: %s", e)
            ray.kill(self.sink)  # its verifier actors are owned by it and go with it
        for pg in (self.learner_pg, self.rollout_pg):
            if pg is not None:
                remove_placement_group(pg)

    def _run_budget_spent(self) -> bool:
        """``stop_after_steps`` reached with work left (the job stops, checkpointed, to be resumed)."""
        n = self.cfg.stop_after_steps
        return n is not None and self.steps_this_run >= n and not self.progress.finished

    def _start_experience(self):
        from learner.experience import make_stream

        return make_stream(self.cfg.experience, with_sink=True)

    def _stage(self, s: int) -> None:
        """Run (or finish) stage ``s``: train until its stop rule, then evaluate, export, checkpoint."""
        import ray

        c, p = self.cfg, self.progress
        stage = c.stages[s]
        name = stage_name(c, s)
        longest = stage.max_response_tokens if c.engine_per_stage else max(x.max_response_tokens for x in c.stages)
        if c.eval.enabled and c.eval.max_response_tokens:
            longest = max(longest, c.eval.max_response_tokens)
        self._start_workers(c.max_prompt_tokens + longest)
        if s == 0 and p.global_step == 0 and c.eval.enabled and c.eval.at_start and not self.evals:
            self._evaluate("start", s)
        ray.get(self.sink.set_stage.remote(s, stage_reward(c, s).model_dump()))
        self.learner.set_loss_config(stage_loss(c, s))
        if stage.lr is not None:
            self.learner.set_lr(stage.lr)
        if not p.stage_done:
            self._train_stage(s)
            if not p.stage_done:  # stopped mid-stage by stop_after_steps (already checkpointed)
                return
        if c.eval.enabled:
            self._evaluate(name, s)
        export = self.out / f"{name}_hf"
        self.learner.export_hf(str(export))
        log.info("%s: exported %s (version %d)", name, export, p.version)
        if not p.finished:
            p.next_stage()
        self._checkpoint()  # a resume from here starts the next stage (or finds the job finished)

    def _train_stage(self, s: int) -> None:
        """Train stage ``s`` until its stop rule (or the run's step budget), generating all the while."""
        import ray
        from tqdm import tqdm

        from rollout.config import SamplingConfig
        from rollout.prompts import create_prompt_source

        c, p = self.cfg, self.progress
        stage = c.stages[s]
        loss = stage_loss(c, s)
        ahead = c.issue_ahead_steps if loss.max_staleness is None else min(c.issue_ahead_steps, loss.max_staleness)
        prompts = to_prompts(stage_problems(stage, c.seed + s), self.tokenizer, s, c.max_prompt_tokens,
                             f"s{s}", c.system_prompt, c.prompt_template)
        batches = BatchBuilder(PromptCursor(prompts, p.data_position), stage.prompts_per_step, ahead,
                               dynamic_sampling=c.dynamic_sampling, max_draws_per_step=c.max_draws_per_step,
                               buffer=self.buffer, pending=self.pending)
        self.buffer, self.pending = [], []
        source = create_prompt_source()
        if batches.in_flight:  # prompts in flight at the last checkpoint: their groups were never trained
            ray.get(source.add.remote(batches.in_flight_prompts))
        sampling = SamplingConfig(n=stage.group_size, temperature=stage.temperature, top_p=stage.top_p,
                                  max_tokens=stage.max_response_tokens, seed=None)
        self.fleet.start_continuous(source, self.sink, sampling.model_dump(), c.rollout.max_in_flight)
        bar = tqdm(total=stage.steps, initial=p.step_in_stage, desc=stage_name(c, s), disable=not c.progress_bar,
                   dynamic_ncols=True, file=sys.stderr)
        t_step = time.perf_counter()
        idle = IdleClock(t_step)
        try:
            while True:
                new = batches.issue()
                if new:
                    source.add.remote(new)
                idle.mark(bool(batches.in_flight), time.perf_counter())
                batches.counters.worker_restarts += self.fleet.poll()  # a dead worker's prompts re-queued
                t0 = time.perf_counter()
                got = self.experience.get(stage.prompts_per_step, timeout=1.0)
                batches.counters.learner_wait_s += time.perf_counter() - t0
                batches.accept(got)
                idle.mark(bool(batches.in_flight), time.perf_counter())
                if not batches.fill():
                    continue
                batch, counters = batches.take()
                self._train_step(s, batch, counters, sync=ahead == 0, in_flight=len(batches.in_flight),
                                 elapsed=time.perf_counter() - t_step, idle=idle)
                p.data_position = batches.cursor.position
                bar.update(1)
                t_step = time.perf_counter()
                reason = stage_stop_reason(p.step_in_stage, stage.steps, p.stage_rewards,
                                           stage.plateau.model_dump() if stage.plateau else None)
                if reason:
                    p.finish_stage(reason, len(c.stages))
                    log.info("%s: stopped after %d steps (%s)", stage_name(c, s), p.step_in_stage, reason)
                    break
                stop_run = self._run_budget_spent()
                if stop_run or (c.checkpoint.every_steps and p.global_step % c.checkpoint.every_steps == 0):
                    # what was delivered joins the buffer through the same filter, so a group is either
                    # buffered or its prompt pending (re-issued on resume): nothing lost or repeated
                    batches.accept(self.experience.get(10**6, timeout=0.0) if self.experience.size() else [])
                    self._checkpoint(buffer=batches.buffer, pending=batches.in_flight_prompts)
                if stop_run:
                    break
        finally:
            bar.close()
            self.fleet.stop_continuous()
            ray.kill(source)
        self.fleet.wait_published()
        # left-over groups belong to this stage's data; the next stage starts fresh

    def _train_step(self, s: int, batch: list[dict[str, Any]], counters: Any, *, sync: bool, in_flight: int,
                    elapsed: float, idle: IdleClock) -> None:
        """One optimizer step on ``batch``, the new weights published, the step's metrics reported."""
        p = self.progress
        metrics = self.learner.train_step(batch)
        metrics = {**metrics, "worker_restarts": counters.worker_restarts,
                   "trained_groups": {g["group_id"]: len(g["samples"]) for g in batch}}
        version = int(metrics.get("version", p.version + 1))
        # a step the learner skipped (every sample older than max_staleness) leaves the version as
        # it was: publishing it again would be refused by the workers as a stale update
        sync_s = self._publish(version, wait=sync) if version > p.version else 0.0
        metrics.update(self.fleet.publish_metrics())  # bytes, hand-over and stall of the last landed update
        row = self.report.step(
            s, p, batch, metrics, version=version, dropped=counters.dropped, elapsed=elapsed, sync_s=sync_s,
            rollout_tokens=counters.rollout_tokens, learner_wait_s=counters.learner_wait_s, in_flight=in_flight,
            rollout_idle_share=idle.take(time.perf_counter()) / max(elapsed, 1e-9),
            rollout_accuracy=counters.rollout_accuracy,
            worker_stats=self.fleet.stats() if self.cfg.worker_stats else None)
        p.record_step(row["reward_mean"], version)
        self.steps_this_run += 1

    # ---- evaluation and checkpoints -----------------------------------------------------------------
    def _evaluate(self, label: str, s: int) -> dict[str, Any]:
        """Held-out accuracy of the current weights with the rollout workers: avg@k, pass@k, greedy."""
        ev, p = self.cfg.eval, self.progress
        result = {"label": label, "stage": s, "version": p.version, "global_step": p.global_step,
                  **evaluate_heldout(self.fleet, self.sink, self.heldout, ev,
                                     ev.max_response_tokens or self.cfg.stages[s].max_response_tokens)}
        self.evals.append(result)
        self.report.log_eval(result)
        return result

    def _checkpoint(self, buffer: list[dict[str, Any]] | None = None,
                    pending: list[dict[str, Any]] | None = None) -> None:
        """Learner state + job progress + groups not trained on + prompts in flight (``grpo_checkpoint``).

        Groups still in the stream are not pulled here (mid-stage the driver has already moved them into
        the buffer; at a stage end they belong to the finished stage): with Redis they stay unacknowledged
        or undelivered and come back after a resume, where the batch builder sorts them."""
        extra = {"progress": self.progress.to_dict(), "buffer": buffer or [], "pending": pending or [],
                 "evals": self.evals}
        self.checkpoints.save(self.learner, self.experience, self.progress.global_step, extra)


def main(cfg: GRPOJobConfig) -> int:
    """Runner of ``flywheel grpo`` (the CLI validated ``cfg``)."""
    return GRPOJob(cfg).run()


if __name__ == "__main__":  # ``python -m services.grpo_job --config FILE ...`` (the ``ray job submit`` entrypoint)
    from services.cli import main as cli_main

    sys.exit(cli_main(["grpo", *sys.argv[1:]]))

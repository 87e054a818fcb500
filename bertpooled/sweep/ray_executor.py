"""The sweep's Ray executor: each child run is a Ray task with declared resources, on whatever node Ray picks.

`runner.run_sweep` stays the one sweep (parent run, naming, tags, resume by config key, closing comparison);
this `executor.Executor` only decides where its children run. Every node logs into the tracking server named by
`MLFLOW_TRACKING_URI`, with artifacts (checkpoints included) through that server (`mlflow server
--serve-artifacts`), so the nodes share no filesystem. A task that Ray retries after its worker or node died
finds its child's runs under the parent by tag `sweep/key` and continues the one `resume.earlier_runs` picks
from its last checkpoint (the same run, RUNNING again), so a child ends FINISHED exactly once. Ray is an optional extra.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from bertpooled.config import Config
from bertpooled.contract import (
    ACCURACY,
    KILLED,
    RESUMED_TAG,
    SWEEP_CHILD_TAG,
    SWEEP_EXECUTOR_TAG,
    SWEEP_KEY_TAG,
    SWEEP_NODE_IP_TAG,
    SWEEP_NODE_TAG,
    SWEEP_SHARED_INPUTS_TAG,
)
from bertpooled.errors import BertpooledError
from bertpooled.sweep import resume
from bertpooled.sweep.executor import Work
from bertpooled.sweep.workers import Owner
from bertpooled.tracking import sweeps

# The package is installed from its checkout (it is on no index): `bertpooled[ray]` would look for it on PyPI.
INSTALL_HINT = 'pip install -e ".[ray]" in the project\'s folder'
# Ray retries a task whose worker process or node died this many times (an error a child raises is not retried:
# it fails the sweep, as with the local executor).
MAX_RETRIES = 3
# How often the driver looks for children that started (their runs carry the node they run on).
POLL_S = 2.0
# After Ctrl-C, how long the cancelled children get to end their runs KILLED themselves.
CANCEL_GRACE_S = 20.0
NODE_TAG, NODE_IP_TAG = SWEEP_NODE_TAG, SWEEP_NODE_IP_TAG


def import_ray():
    """The `ray` module, or the one-line error saying how to install it."""
    try:
        import ray
    except ImportError:
        raise BertpooledError(f"--executor ray needs Ray, which is not installed: {INSTALL_HINT}") from None
    return ray


@dataclass
class RayExecutor:
    """Where a sweep's children run: tasks on the Ray cluster at `address` (None: RAY_ADDRESS, else a local Ray)."""

    address: str | None = None
    cpus_per_run: float = 1.0
    gpus_per_run: float = 0.0

    name = "ray"
    shares_inputs = False  # children on other machines read their own inputs: the driver need not hold the data
    here = False  # the cluster's nodes place the work: this machine's cores and memory are not what bounds it

    def __post_init__(self) -> None:
        if not self.cpus_per_run > 0:
            raise BertpooledError(
                f"--cpus-per-run {self.cpus_per_run} must be > 0 (CPUs Ray reserves per child), e.g. 1"
            )
        if self.gpus_per_run < 0:
            raise BertpooledError(f"--gpus-per-run {self.gpus_per_run} must be >= 0, e.g. 1 for one GPU per child")
        import_ray()

    def check(self, children: Sequence) -> None:
        """A child that asks for a GPU must reserve one: Ray would not keep two such children off the same GPU."""
        wants_gpu = sorted({c.config.device for c in children if c.config.device.startswith("cuda")})
        if wants_gpu and not self.gpus_per_run:
            raise BertpooledError(
                f"device={wants_gpu[0]} with --gpus-per-run 0: pass --gpus-per-run 1 so that Ray "
                "reserves a GPU for each child (or --device auto)"
            )

    def connect(self) -> None:
        """Join the cluster (before the sweep's parent run exists, so a wrong address leaves no run behind)."""
        ray = import_ray()
        if ray.is_initialized():
            return
        where = self.address or os.environ.get("RAY_ADDRESS") or ""
        if where and where != "auto" and "://" not in where:
            # Ray itself waits minutes for a head that is not there; a plain TCP connect answers in seconds.
            host, _, port = where.rpartition(":")
            try:
                socket.create_connection((host, int(port)), timeout=5).close()
            except (OSError, ValueError) as exc:
                raise BertpooledError(
                    f"no Ray cluster answers at {where} ({exc}): start one with `ray start --head` or fix --address"
                ) from None
        try:
            # The children's own output stays in Ray's worker logs: the driver prints one line per start/finish.
            ray.init(address=self.address or None, log_to_driver=False, logging_level="WARNING")
        except Exception as exc:
            where = self.address or os.environ.get("RAY_ADDRESS") or "a new local Ray"
            first = (str(exc).splitlines() or [type(exc).__name__])[0]
            raise BertpooledError(
                f"cannot join the Ray cluster at {where} ({first}): start it with `ray start --head` or fix --address"
            ) from None

    def close(self) -> None:
        """Leave the cluster (the cluster itself keeps running)."""
        ray = import_ray()
        if ray.is_initialized():
            ray.shutdown()

    def describe(self) -> str:
        cpus = f"{self.cpus_per_run:g} CPU{'' if self.cpus_per_run == 1 else 's'}"
        return f"Ray ({cpus}, {self.gpus_per_run:g} GPU per child)"

    def start(self, children: Sequence) -> None:
        """Check the children's resources, then join the cluster: before the sweep's parent run exists."""
        self.check(children)
        self.connect()

    def run(self, work: Work) -> Iterator[str]:
        if work.todo:
            yield f"{len(work.todo)} children on {self.describe()}"
            ran = self.run_children(work.todo, work.parent_id, work.log, work.progress, keep_threads=work.keep_threads)
            work.ran.extend(ran)

    def run_children(
        self,
        todo: Sequence,
        parent_id: str,
        log: Callable[[str], None],
        progress: bool | None = None,
        keep_threads: bool = False,
    ) -> list:
        """Run `todo` (sweep Children) as tasks; one line per child start/finish with its node, a bar of children done.

        The first child that fails stops the sweep (the others are cancelled and end KILLED); Ctrl-C does the same.
        `keep_threads`: the children's thread count stays as given, auto included (a resumed sweep's earlier
        children had it; see `resume.threads_as_before`).
        """
        from tqdm.auto import tqdm

        ray = import_ray()
        self.connect()
        refs = self._submit(ray, todo, parent_id, keep_threads)
        by_key = {child.key: child for child in todo}
        log(f"running {len(todo)} children as Ray tasks, {self.describe()}")

        disable = progress is False or (progress is None and not sys.stderr.isatty())
        bar = tqdm(total=len(todo), desc="children done", unit="run", disable=disable, file=sys.stderr)

        def say(line: str) -> None:
            with tqdm.external_write_mode(file=sys.stderr):
                log(line)

        experiment_id = sweeps.get_run(parent_id).info.experiment_id
        seen: set[tuple[str, str]] = set()
        pending, ran = list(refs), []
        try:
            while pending:
                ready, pending = ray.wait(pending, num_returns=1, timeout=POLL_S)
                self._report_starts(experiment_id, parent_id, by_key, seen, say)
                for ref in ready:
                    ran.append(self._finished(ray, ref, refs[ref], seen, say))
                    bar.update(1)
                    say(f"{ran[-1][1]} [{len(ran)}/{len(todo)}]")
        except BaseException:
            self._cancel(ray, pending, experiment_id, parent_id, by_key, say)
            raise
        finally:
            bar.close()
        return [outcome for outcome, _ in ran]

    def _submit(self, ray, todo: Sequence, parent_id: str, keep_threads: bool = False) -> dict:
        """One task per child, with its resources; {task ref: child}."""
        threads = max(1, int(self.cpus_per_run))
        task = ray.remote(_run_child).options(
            num_cpus=self.cpus_per_run,
            num_gpus=self.gpus_per_run,
            max_retries=MAX_RETRIES,
            retry_exceptions=False,
        )
        uri = sweeps.tracking_uri()
        refs = {}
        for child in todo:
            # Torch gets as many threads as Ray reserved CPUs, unless the config says otherwise or a resumed sweep's
            # earlier children ran on auto (then so do these: the parallel executor keeps it the same way).
            keep = child.config.num_threads or keep_threads
            config = child.config if keep else dataclasses.replace(child.config, num_threads=threads)
            if config.device == "auto" and not self.gpus_per_run:
                # Ray leaves a GPU visible to a task that reserved none: `auto` would use it unreserved.
                config = dataclasses.replace(config, device="cpu")
            tags = {
                SWEEP_KEY_TAG: child.key,
                SWEEP_CHILD_TAG: child.label,
                SWEEP_EXECUTOR_TAG: "ray",
                SWEEP_SHARED_INPUTS_TAG: "each node's own caches",
            }
            refs[task.remote(config, parent_id, tags, uri)] = child
        return refs

    def worker_config(self, config: Config, count: int) -> Config:
        """Torch gets as many threads as Ray reserved CPUs, unless the config says otherwise; `auto` runs on the CPU
        of a task that reserved no GPU (Ray leaves a GPU visible to it: `auto` would use it unreserved)."""
        if not config.num_threads:
            config = dataclasses.replace(config, num_threads=max(1, int(self.cpus_per_run)))
        if config.device == "auto" and not self.gpus_per_run:
            config = dataclasses.replace(config, device="cpu")
        return config

    def run_workers(
        self, target: Callable[..., None], args: Any, count: int, log: Callable[[str], None], owned_by: Owner
    ) -> None:
        """The workers as Ray tasks with this executor's resources (every node must reach what they share: the
        tracking store and, for a study, its storage). A worker's error stops the others; so does Ctrl-C (Ray
        delivers it to each task as KeyboardInterrupt: its running work ends KILLED)."""
        ray = import_ray()
        self.connect()
        task = ray.remote(target).options(num_cpus=self.cpus_per_run, num_gpus=self.gpus_per_run, max_retries=0)
        refs = [task.remote(args, i) for i in range(count)]
        log(f"{count} worker(s) as Ray tasks, {self.describe().removeprefix('Ray (').rstrip(')')}")
        try:
            ray.get(refs)
        except ray.exceptions.RayTaskError as exc:
            cause = exc.cause if isinstance(exc.cause, BaseException) else exc
            _cancel_tasks(ray, refs)
            raise BertpooledError(
                f"a worker failed on Ray ({(str(cause).splitlines() or [type(cause).__name__])[0]}): "
                f"fix it, then {owned_by.resume_hint}"
            ) from None
        except BaseException:
            _cancel_tasks(ray, refs)
            raise

    @staticmethod
    def _finished(ray, ref, child, seen: set, say) -> tuple:
        """(the child's Outcome, its closing line); its start line first if no look saw it start."""
        try:
            outcome, node, node_ip = ray.get(ref)
        except ray.exceptions.RayTaskError as exc:
            # The child's own error (its run already ended FAILED), not Ray's wrapper around it.
            cause = exc.cause if isinstance(exc.cause, BaseException) else exc
            say(f"{child.label}: failed ({(str(cause).splitlines() or [type(cause).__name__])[0]})")
            raise cause from None
        if (outcome.run_id, node) not in seen:
            # It started (or, after a retry, continued) and ended between two looks: that line still comes first.
            seen.add((outcome.run_id, node))
            resumed = sweeps.get_run(outcome.run_id).data.tags.get(RESUMED_TAG)
            how = f"resumed after epoch {resumed}" if resumed else "started"
            say(f"{child.label}: {how} on node {node_ip} {node[:8]} (run {outcome.run_id})")
        line = (
            f"{child.label}: finished on node {node_ip} {node[:8]} (run {outcome.run_id}), "
            f"test accuracy {outcome.metrics.get(ACCURACY.key, float('nan')):.4f}"
        )
        return outcome, line

    @staticmethod
    def _report_starts(experiment_id, parent_id, by_key, seen, say) -> None:
        """A line for each child run that began (or continued) on a node since the last look."""
        for run in sweeps.children(parent_id, experiment_id, running=True):
            tags = run.data.tags
            key, node = tags.get(SWEEP_KEY_TAG), tags.get(NODE_TAG)
            if key not in by_key or not node or (run.info.run_id, node) in seen:
                continue
            seen.add((run.info.run_id, node))
            resumed = tags.get(RESUMED_TAG)
            how = f"resumed after epoch {resumed}" if resumed else "started"
            say(f"{by_key[key].label}: {how} on node {tags.get(NODE_IP_TAG, '?')} {node[:8]} (run {run.info.run_id})")

    @staticmethod
    def _cancel(ray, pending, experiment_id, parent_id, by_key, say) -> None:
        """Stop the children still running: an interrupt reaches each task, whose run then ends KILLED itself;
        a run whose task could not say so in time (its node gone, say) is ended KILLED from here."""
        for ref in pending:
            ray.cancel(ref)
        if pending:
            ray.wait(pending, num_returns=len(pending), timeout=CANCEL_GRACE_S)
        try:
            for run in sweeps.children(parent_id, experiment_id, running=True):
                if run.data.tags.get(SWEEP_KEY_TAG) in by_key:
                    sweeps.end_child(run.info.run_id, KILLED, "the sweep was stopped while this child ran")
                    say(f"{by_key[run.data.tags[SWEEP_KEY_TAG]].label}: marked KILLED (run {run.info.run_id})")
        except Exception as exc:
            say(f"could not mark the unfinished children KILLED ({exc}); a resume continues them all the same")


def _cancel_tasks(ray, refs: list) -> None:
    for ref in refs:
        ray.cancel(ref)  # a KeyboardInterrupt inside the task: its work ends as on Ctrl-C
    ray.wait(refs, num_returns=len(refs), timeout=CANCEL_GRACE_S)


def _run_child(config, parent_id: str, tags: dict[str, str], tracking_uri: str):
    """One child, inside a Ray task on some node: what `resume.earlier_runs` says of its earlier runs under the
    parent (a retry finds those its lost worker left), then continue the chosen one or start a new run.

    Returns (Outcome, node id, node IP). Runs again only what has no FINISHED run: a retry that finds the child
    already FINISHED (its node died after the run ended) returns that run instead of training it twice.
    """
    import ray

    from bertpooled.run.experiment import Outcome, run_or_resume

    sweeps.use_tracking_uri(tracking_uri)
    node, node_ip = ray.get_runtime_context().get_node_id(), ray.util.get_node_ip_address()
    tags = {**tags, NODE_TAG: node, NODE_IP_TAG: node_ip}
    earlier = resume.earlier_runs(sweeps.children(parent_id, key=tags[SWEEP_KEY_TAG]))
    if earlier.finished is not None:
        run = earlier.finished
        return Outcome(run.info.run_id, run.info.experiment_id, dict(run.data.metrics), "", "", ""), node, node_ip
    resume.end_orphans(earlier)

    def log(line: str) -> None:
        print(f"[{tags[SWEEP_CHILD_TAG]}] {line}", file=sys.stderr, flush=True)

    started = time.perf_counter()
    resume_id = earlier.resume.info.run_id if earlier.resume is not None else None
    outcome = run_or_resume(config, resume_id, progress=False, log=log, parent_run_id=parent_id, tags=tags)
    log(f"done in {time.perf_counter() - started:.1f}s on node {node_ip} {node[:8]}")
    return outcome, node, node_ip

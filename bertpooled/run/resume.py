"""Continuing an interrupted run: what it was (one read of the store: config, data digest, checkpoint, code),
who may continue it (a lock on this machine, the owner's heartbeat across machines), and what the continued run
records. `run.experiment.run_experiment(config, resume=...)` then trains on from the checkpoint."""

from __future__ import annotations

import dataclasses
import hashlib
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from bertpooled.config import Config
from bertpooled.contract import CHECKPOINT_SHA256_TAG
from bertpooled.errors import BertpooledError
from bertpooled.run import checkpoint
from bertpooled.tracking import ownership, provenance
from bertpooled.tracking import runs as tracking
from bertpooled.tracking.models import fail_unfinished_models, run_to_resume
from bertpooled.tracking.probe import check_tracking_reachable


@dataclass
class Resume:
    """A run to continue: its id, its data digest and its verified last checkpoint."""

    run_id: str
    data_digest: str
    state: checkpoint.State
    code_change: str = ""
    """With --allow-code-change: how the code differs from the run's ("" when it does not)."""
    lock: IO[str] | None = None
    """The open lock file that makes this process the run's only resumer on this machine (see `claim_run`)."""

    def release(self) -> None:
        """Let another process resume the run (the lock also goes when this process ends, however it ends)."""
        ownership.let_go(self.run_id)
        if self.lock is not None:
            self.lock.close()
            self.lock = None


def claim_run(run_id: str):
    """An exclusive lock on `run_id` for this process, or a one-line error when another process holds it.

    Two resumes of one run at once would both log every metric and a model each into the same run. The OS
    drops the lock when its process dies (kill -9 too), so a crashed resume never blocks the next one. The
    lock file lives in the cache folder: it covers resumes on this machine, not other machines that share a
    tracking server. An unwritable cache folder means resuming without the lock.
    """
    import fcntl

    from bertpooled.data.imdb import cache_dir

    folder = cache_dir() / "locks"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        # The open handle is the lock: returned to the caller, who holds it for the run and closes it.
        handle = open(folder / f"resume-{hashlib.sha256(run_id.encode()).hexdigest()[:32]}.lock", "a+")  # noqa: SIM115
    except OSError:
        return None
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise BertpooledError(
            f"run {run_id} is being resumed by another process on this machine: wait for it to end, or stop it"
        ) from None
    return handle


def prepare_resume(
    run_id: str, requested: dict[str, object] | None, allow_code_change: bool = False, take_over: bool = False
) -> tuple[Config, Resume]:
    """The run's own config (checked against any options given now), its checkpoint and its code, before anything runs.

    Code that differs from the run's (commit, uncommitted changes, installed version) is refused unless
    `allow_code_change`, which records the difference on the run instead. A run that a live process drives (here
    or on another machine: see bertpooled.tracking.ownership) is refused, unless `take_over`; from here on this
    process drives it, its heartbeat kept fresh until `Resume.release`.
    """
    check_tracking_reachable()  # seconds, not minutes of MLflow's retries against a dead or hanging server
    lock = claim_run(run_id)
    try:
        config, resume = _prepare_resume(run_id, requested, allow_code_change)
        ownership.claim(run_id, "run", take_over=take_over)  # the last step: nothing after it can fail
    except BaseException:
        if lock is not None:
            lock.close()
        raise
    resume.lock = lock
    return config, resume


def _prepare_resume(run_id: str, requested: dict[str, object] | None, allow_code_change: bool) -> tuple[Config, Resume]:
    from bertpooled.config import load_config
    from bertpooled.config.files import read_yaml, resolve_config_path

    with tempfile.TemporaryDirectory() as tmp:
        record = run_to_resume(run_id, Path(tmp))
        # Runs logged before these fields existed trained nn.LSTM's two bias vectors on the word table.
        params = {"lstm_bias": "torch", "features": "embeddings", **record.config}
        config = load_config(None, params)
        # Verified against the run being resumed, whatever its tags say (a copied checkpoint is another run's).
        expected = record.tags.get(CHECKPOINT_SHA256_TAG)
        state = checkpoint.load(record.checkpoint, expected, checkpoint.identity(run_id, config.to_dict()))
    if requested:
        # Options given now are compared one by one with the run's own; only the data's location may change
        # (its content is checked against the run's digest before training).
        file = requested.pop("config", None)
        given = {**(read_yaml(resolve_config_path(str(file))) if file else {}), **requested}
        wanted = load_config(None, {**config.to_dict(), **given}).to_dict()
        config = dataclasses.replace(config, data=wanted["data"])
        differs = [f"{k}={v!r} there, {wanted[k]!r} now" for k, v in config.to_dict().items() if wanted[k] != v]
        if differs:
            raise BertpooledError(
                f"run {run_id} had another config ({'; '.join(differs[:3])}): resume it as it was, without those "
                "options"
            )
    return config, Resume(run_id, record.data_digest, state, _code_change(run_id, record.code, allow_code_change))


def _code_change(run_id: str, then: dict[str, str], allow: bool) -> str:
    """How the code now differs from the code the run logged ("" when it does not); refused unless `allow`."""
    now = provenance.code_provenance()
    differs = [
        f"{k} {then[k].lower() or '-'} -> {now[k].lower() or '-'}"
        for k in then
        if k in now and then[k].lower() != now[k].lower()
    ]
    if not differs:
        return ""
    if not allow:
        raise BertpooledError(
            f"run {run_id} was trained by other code ({'; '.join(differs[:2])}): resume it with the code it started "
            "with, or pass --allow-code-change to continue anyway and record the change on the run"
        )
    return "; ".join(differs)


def record(resume: Resume, log) -> None:
    """What a resumed run records before training on: where it resumed, and what the interruption left."""
    log(f"resuming run {resume.run_id} after epoch {resume.state.epoch}")
    orphans = fail_unfinished_models(resume.run_id)
    if orphans:
        log(f"marked FAILED the model(s) an interrupted model logging left PENDING: {', '.join(orphans)}")
    if resume.code_change:
        # Params cannot change: the run keeps the code it started with, and says what resumed it.
        tracking.set_tags({"resume/code_change": resume.code_change})

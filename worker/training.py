"""The trainer service: one training run, from `queued` to a stored (and maybe promoted) checkpoint.

    claim the run  →  corpus from storage  →  trainer.train.train(resume=True)  →  best checkpoint row,
                                                  │ every few seconds: progress   loss.png, sample, promotion,
                                                  │ every evaluation: checkpoints  run succeeded
                                                  └ every ~1 s: cancel flag

Crash safety. The `last` checkpoint (model, optimizer, RNG, data position) is copied to storage at every
evaluation, atomically. When the task is redelivered after its trainer died, the run is still `running` and
its progress heartbeat goes stale; the new trainer takes the run over (a conditional UPDATE, so only one
can), fetches `last` into its local run folder and `train(..., resume=True)` continues from that step. A
copy delivered while the first trainer is alive (Redis redelivers any task unacknowledged for longer than
its visibility timeout) sees a fresh heartbeat and backs off (`Busy`, retried later), and a copy that
arrives after the run ended does nothing.

Fair order between servers. A train message is a claim ticket, not an order to train its own run: every
run is enqueued exactly once when it is created, so there are at least as many tickets as queued runs, and
a trainer holding a fresh ticket starts the fairest queued run (db.runs.claim_next_run: the server with the
fewest runs running, then the one whose last run started longest ago; its oldest run), whichever run the
ticket was issued for. One server queueing a hundred runs therefore delays another server's run by at most
the runs already training, not by its hundred. The claim records the ticket as the run's task_id, in the same
UPDATE that starts it, so a ticket that comes back (a redelivery after its trainer died, a retry, a Busy
re-publish) finds the run it claimed and resumes it or backs off exactly as before; a ticket that finds
nothing queued (its run was cancelled, or claimed by another ticket that is still on its way) ends at once.
A queued run whose message was lost (a crash between creating and sending it) would take another run's
ticket: beat issues a ticket for each queued run waiting long while no train message waits (unticketed_runs).
On PostgreSQL the candidate row is locked FOR UPDATE SKIP LOCKED, so trainers claiming together take
different runs without waiting; SQLite has one writer, and start_run's conditional UPDATE decides. A beat
re-enqueue of an orphaned run (requeue_orphaned_runs) is not a ticket: it names the run to resume; nor is a
run in-process (no broker), which trains at once in the thread that asked for it.
Alternatives weighed: per-server caps alone bound the wait by the cap times the run length (three
two-hour runs), and reordering Celery's queue in Redis is invisible to SQL and racy between trainers.
"""

from __future__ import annotations

import fcntl
import logging
import math
import os
import shutil
import socket
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select, update
from sqlalchemy.exc import OperationalError as SQLOperationalError

from core.contracts import RunProgress
from core.settings import get_settings
from db import Checkpoint, Persona, RunStatus, TrainingRun, open_storage, session_scope
from db.checkpoints import save_checkpoint
from db.personas import set_active_checkpoint
from db.runs import InvalidTransition, cancel_run, claim_next_run, fail_run, run_claimed_by, start_run, succeed_run
from db.storage import Storage, checkpoint_key
from db.types import as_utc, utcnow

log = logging.getLogger(__name__)
CANCEL_CHECK_SECONDS = 1.0  # how stale the cancel flag may be
DATABASE_OUTAGE_SECONDS = 60.0  # a run trains on through a database outage this long (see Reporter)
SAMPLE_TOKENS = 200


class Busy(RuntimeError):
    """Another live trainer owns this run (a duplicate delivery): try again later."""


def owner_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def loss_plot_key(run_id: int) -> str:
    return f"runs/{run_id}/loss.png"


def _finite(x):
    return x if isinstance(x, float | int) and math.isfinite(x) else None


def summary(run: TrainingRun) -> dict:
    return {"run_id": run.id, "status": run.status.value, "error": run.error, **(run.metrics or {})}


# -- claiming ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ClaimedRun:
    """What a trainer claimed: the run, and what it trains from."""
    run_id: int
    persona_id: int
    slug: str  # the persona's: names the run's checkpoints in storage
    recipe: str  # trainer/recipes/<recipe>.json
    overrides: dict  # the run's own settings (TrainingRun.config) over the recipe's
    corpus_id: int | None  # an uploaded corpus; None: the recipe's corpus, by name
    attempt: int  # 1 for the first trainer, one more for each takeover


def claim(run_id: int, task_id: str | None) -> ClaimedRun | None:
    """Make this process the run's trainer. Returns what it claimed, or None if the run already ended."""
    settings = get_settings()
    with session_scope() as session:
        run = session.get(TrainingRun, run_id)
        if run is None:
            raise LookupError(f"no training run {run_id}")
        if run.status.finished:
            return None
        attempt = int(run.progress.get("attempt", 0)) + 1
        progress = {**run.progress, "owner": owner_id(), "attempt": attempt, "heartbeat": time.time()}
        if run.status is RunStatus.QUEUED:
            try:
                start_run(session, run, task_id)
            except InvalidTransition:  # cancelled (or claimed) between our read and our write
                return claim(run_id, task_id)
            run.progress = progress
        else:
            age = time.time() - float(run.progress.get("heartbeat") or 0)
            if run.progress.get("owner") != owner_id() and age < settings.train_lease_seconds:
                raise Busy(f"run {run_id} is being trained by {run.progress.get('owner')} "
                           f"(progress {age:.0f} s ago)")
            took = session.execute(update(TrainingRun).where(TrainingRun.id == run_id,
                                                             TrainingRun.status == RunStatus.RUNNING,
                                                             TrainingRun.updated_at == run.updated_at)
                                   .values(progress=progress, updated_at=utcnow())
                                   .execution_options(synchronize_session=False))
            if took.rowcount != 1:
                raise Busy(f"run {run_id} was just taken over by another trainer")
            log.info("run %s: taking over from %s (attempt %s)", run_id, run.progress.get("owner"), attempt)
        return _claimed(run, attempt)


def _claimed(run: TrainingRun, attempt: int) -> ClaimedRun:
    persona = run.persona
    return ClaimedRun(run.id, persona.id, persona.slug, run.recipe or persona.recipe, dict(run.config or {}),
                      run.corpus_id, attempt)


def claim_fairest(task_id: str) -> ClaimedRun | None:
    """Spend ticket `task_id` on the fairest queued run (see the module docstring); None: nothing is queued."""
    with session_scope() as session:
        run = claim_next_run(session, task_id)
        if run is None:
            return None
        run.progress = {**run.progress, "owner": owner_id(), "attempt": 1, "heartbeat": time.time()}
        log.info("ticket %s: claimed run %s (server %s)", task_id, run.id, run.guild_id)
        return _claimed(run, 1)


def resolve_ticket(task_id: str) -> int | ClaimedRun | None:
    """What a train message with a ticket does: the run it claimed before (an int: resume it or back off), a
    run it claims now, or None when nothing is left to claim."""
    with session_scope() as session:
        earlier = run_claimed_by(session, task_id)
    return earlier if earlier is not None else claim_fairest(task_id)


def orphaned_runs(stale_after: float | None = None) -> list[int]:
    """Running runs whose trainer has been silent for `stale_after` seconds (default 3 leases): their
    trainer died. Redis gives their task back only after its visibility timeout (hours by default), so beat
    re-enqueues them sooner; a duplicate is harmless (`claim` lets one trainer resume, the rest back off)."""
    stale_after = stale_after if stale_after is not None else 3 * get_settings().train_lease_seconds
    with session_scope() as session:
        running = session.scalars(select(TrainingRun).where(TrainingRun.status == RunStatus.RUNNING)).all()
        now = time.time()
        return [run.id for run in running
                if now - float(run.progress.get("heartbeat") or run.updated_at.timestamp()) > stale_after]


def unticketed_runs(older_than: float | None = None) -> list[int]:
    """Queued runs waiting longer than `older_than` seconds (default 3 leases). Called when no train message
    waits in the queue: these runs then have no ticket left (their enqueue was lost, e.g. a crash between
    creating the run and sending it), so beat issues them one each; a spare ticket finds nothing and ends."""
    older_than = older_than if older_than is not None else 3 * get_settings().train_lease_seconds
    with session_scope() as session:
        queued = session.execute(select(TrainingRun.id, TrainingRun.created_at)
                                 .where(TrainingRun.status == RunStatus.QUEUED)).all()
    now = utcnow()
    return [run_id for run_id, created in queued if (now - as_utc(created)).total_seconds() > older_than]


# -- inputs -----------------------------------------------------------------------------------------------

def train_config(claimed: ClaimedRun, out_dir: Path):
    from trainer.recipes import load_recipe
    from trainer.train import TrainConfig

    settings = get_settings()
    cfg = {**load_recipe(claimed.recipe), **claimed.overrides, "out_dir": str(out_dir)}
    cfg.setdefault("name", _display_name(claimed))  # the loss plot's title: the persona, never the recipe
    cap = settings.train_max_minutes
    cfg["minutes"] = min(cfg.get("minutes") or cap, cap)  # every run has a time budget
    cfg.setdefault("sample_interval", cfg.get("eval_interval", 500))  # a sample with every evaluation
    if settings.torch_threads and not cfg.get("threads"):
        cfg["threads"] = settings.torch_threads
    return TrainConfig.from_dict(cfg)


def _display_name(claimed: ClaimedRun) -> str:
    with session_scope() as session:
        persona = session.get(Persona, claimed.persona_id)
        return persona.display_name if persona is not None else claimed.slug


def corpus_text(claimed: ClaimedRun, config, storage: Storage):
    """The run's corpus (core.text.DecodedCorpus, with its document boundaries so that training keeps the
    documents of a multi-file upload or a corpus folder apart): the uploaded one from storage, or (bundled
    personas) the recipe's corpus by name."""
    if claimed.corpus_id is not None:
        from db import Corpus
        from db.ingest import read_corpus

        with session_scope() as session:
            corpus = session.get(Corpus, claimed.corpus_id)
            if corpus is None:
                raise LookupError(f"corpus {claimed.corpus_id} of run {claimed.run_id} was deleted")
            return read_corpus(corpus, storage)
    from trainer.corpus import load_corpus

    return load_corpus(config.corpus, get_settings().corpus_dirs or None)


def _step_of(path: Path) -> int:
    from core.checkpoints import read_meta

    meta = read_meta(path)
    return int(meta.get("run", {}).get("step", meta.get("step", 0)))


RESUME_FILES = (("last", "last.safetensors"), ("running-best", "best.safetensors"))  # storage name, local file


def fetch_checkpoints(claimed: ClaimedRun, out_dir: Path, storage: Storage) -> int:
    """Bring the run's checkpoints from storage into out_dir unless a newer local copy exists (a restart
    on the same machine). Returns the step training will resume from (0: from scratch). A first attempt
    starts clean: anything there belongs to no live run (e.g. a database that was reset)."""
    if claimed.attempt == 1:
        shutil.rmtree(out_dir, ignore_errors=True)
        for name, _ in RESUME_FILES:
            storage.delete(checkpoint_key(claimed.slug, claimed.run_id, name))
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, filename in RESUME_FILES:
        key = checkpoint_key(claimed.slug, claimed.run_id, name)
        if not storage.exists(key):
            continue
        local, incoming = out_dir / filename, out_dir / f".{filename}.incoming"
        incoming.write_bytes(storage.get(key))
        if not local.exists() or _step_of(local) < _step_of(incoming):
            os.replace(incoming, local)
        else:
            incoming.unlink()
    last = out_dir / "last.safetensors"
    return _step_of(last) if last.exists() else 0


# -- reporting --------------------------------------------------------------------------------------------

class Reporter:
    """The trainer's callback and should_stop: progress into the run row (every `report_seconds`, which
    is also the heartbeat) and to `on_progress` (the task state), checkpoints to storage, the cancel flag."""

    def __init__(self, claimed: ClaimedRun, out_dir: Path, storage: Storage, on_progress: Callable[[dict], None] | None,
                 resumed_from: int):
        self.claimed, self.out_dir, self.storage, self.on_progress = claimed, out_dir, storage, on_progress
        self.report_seconds = get_settings().train_report_seconds
        self.latest: dict = {"resumed_from": resumed_from, "attempt": claimed.attempt}
        self.last_write = self.last_check = time.monotonic()
        self.cancelled = False
        self.database_away_since: float | None = None
        self._uploaded: dict[str, float] = {}

    def callback(self, event: str, p, details: dict) -> None:
        progress = RunProgress(step=p.step, total=p.total_steps, epoch=round(p.epoch, 3), loss=p.loss,
                               best_val_loss=p.best_val_loss, tokens_per_s=round(p.tokens_per_s), eta=p.eta,
                               fraction=round(p.fraction, 4), elapsed=round(p.elapsed, 1))
        if p.val_loss is not None:
            progress.val_loss = _finite(p.val_loss)
        if event == "sample":
            progress.sample = details.get("text", "")
        if event == "warning":
            progress.warning = details.get("message", "")
        self.latest.update(progress.model_dump(exclude_unset=True))  # non-finite values stored as null
        self.latest.setdefault("first_step", p.step)  # > 0 on a resumed run
        if event == "checkpoint":
            self.upload()
        if event != "progress" or time.monotonic() - self.last_write >= self.report_seconds:
            self.flush()

    def upload(self) -> None:
        """Copy last (and best, when it changed) to storage; each put is atomic."""
        for name, filename in RESUME_FILES:
            path = self.out_dir / filename
            if path.exists() and self._uploaded.get(name) != path.stat().st_mtime:
                self.storage.put_file(checkpoint_key(self.claimed.slug, self.claimed.run_id, name), path)
                self._uploaded[name] = path.stat().st_mtime

    def flush(self) -> None:
        from db.runs import update_progress

        self.latest["heartbeat"] = time.time()
        self.latest["owner"] = owner_id()
        with self.database_may_be_away():
            with session_scope() as session:
                if update_progress(session, self.claimed.run_id, **self.latest):
                    self.cancelled = True
        self.last_write = self.last_check = time.monotonic()
        if self.on_progress is not None:
            try:
                self.on_progress(dict(self.latest))
            except Exception as e:  # noqa: BLE001 - the task state (Redis) is a courtesy; the row is the record
                log.warning("run %s: progress not published: %s", self.claimed.run_id, e)

    def should_stop(self) -> bool:
        now = time.monotonic()
        if now - self.last_write >= self.report_seconds:
            self.flush()  # the heartbeat, even through long stretches without progress events
        elif now - self.last_check >= CANCEL_CHECK_SECONDS:
            with self.database_may_be_away():
                with session_scope() as session:
                    flag = session.scalar(select(TrainingRun.cancel_requested)
                                          .where(TrainingRun.id == self.claimed.run_id))
                self.cancelled = self.cancelled or bool(flag)
            self.last_check = now
        return self.cancelled

    @contextmanager
    def database_may_be_away(self):
        """Training needs the database only to report: while it is away (PostgreSQL restarting) the run goes
        on and its progress writes are skipped, for up to DATABASE_OUTAGE_SECONDS; then the error reaches the
        task, which retries (the run stays running and resumes from its last checkpoint)."""
        try:
            yield
            self.database_away_since = None
        except SQLOperationalError as e:
            now = time.monotonic()
            self.database_away_since = self.database_away_since or now
            if now - self.database_away_since > DATABASE_OUTAGE_SECONDS:
                raise
            log.warning("run %s: database unreachable for %.0f s, training on: %s", self.claimed.run_id,
                        now - self.database_away_since, type(e.orig or e).__name__)


# -- the run ----------------------------------------------------------------------------------------------

def train_run(run_id: int, task_id: str | None = None, on_progress: Callable[[dict], None] | None = None,
              transient: tuple[type[BaseException], ...] = (), ticket: bool = False) -> dict:
    """Train a run to the end (or resume it); returns the run's summary. With `ticket`, `task_id` is a claim
    ticket (see the module docstring) and the run trained is the fairest queued one, or the one the ticket
    claimed before; otherwise it is `run_id`. Raises Busy when another trainer owns the run, and lets
    `transient` errors through for the task to retry (the run stays running and the retry resumes it); any
    other error fails the run."""
    if ticket and task_id is not None:
        resolved = resolve_ticket(task_id)
        if resolved is None:  # nothing queued: this ticket's run was cancelled or another ticket took it
            with session_scope() as session:
                return summary(session.get(TrainingRun, run_id))
        if isinstance(resolved, ClaimedRun):
            with _hold_run(resolved.run_id):
                return _train_claimed(resolved, on_progress, transient)
        run_id = resolved
    with _hold_run(run_id):
        claimed = claim(run_id, task_id)
        if claimed is None:
            with session_scope() as session:
                return summary(session.get(TrainingRun, run_id))
        return _train_claimed(claimed, on_progress, transient)


def _train_claimed(claimed: ClaimedRun, on_progress, transient: tuple[type[BaseException], ...]) -> dict:
    try:
        return _train(claimed, on_progress)
    except Exception as e:
        if isinstance(e, transient):
            raise
        if _expected_failure(e):  # the message says it all: one line, the run failed, the task done
            log.info("run %s failed: %s", claimed.run_id, e)
            return _fail(claimed, str(e))
        log.exception("run %s failed", claimed.run_id)
        _fail(claimed, f"{type(e).__name__}: {e}")
        raise


def _expected_failure(error: Exception) -> bool:
    """A failure of the run's input or its training (no such corpus, loss diverged), not of the code."""
    from core.text import CorpusError
    from trainer.train import TrainingDiverged

    return isinstance(error, CorpusError | TrainingDiverged)


def _fail(claimed: ClaimedRun, message: str) -> dict:
    try:
        with session_scope() as session:
            return summary(fail_run(session, claimed.run_id, message[:2000]))
    except InvalidTransition:  # cancelled meanwhile
        with session_scope() as session:
            return summary(session.get(TrainingRun, claimed.run_id))


@contextmanager
def _hold_run(run_id: int):
    """This machine's hold on the run while a trainer here claims and trains it: a second trainer of the run
    here (another process, or another thread of this one: flock locks each open file) gets Busy instead of
    sharing the run folder. The kernel lets go when the process dies, so a takeover after a crash goes on."""
    runs_dir = get_settings().runs_dir
    runs_dir.mkdir(parents=True, exist_ok=True)
    with open(runs_dir / f"run-{run_id}.lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise Busy(f"run {run_id} is being trained on this machine") from None
        yield


def _train(claimed: ClaimedRun, on_progress) -> dict:
    from core.text import CorpusError
    from trainer.gate import open_gate
    from trainer.train import train

    settings = get_settings()
    storage = open_storage()
    out_dir = settings.runs_dir / f"run-{claimed.run_id}"
    config = train_config(claimed, out_dir)
    text = corpus_text(claimed, config, storage)
    try:  # the quality gate's held-out text and the base's loss on it; a text with nothing to learn stops here
        gate = open_gate(config, text, settings.train_min_distinct_bytes)
    except CorpusError as e:
        return _refuse(claimed, e.message)
    resumed_from = fetch_checkpoints(claimed, out_dir, storage)
    if resumed_from:
        log.info("run %s: resuming from step %s", claimed.run_id, resumed_from)
    reporter = Reporter(claimed, out_dir, storage, on_progress, resumed_from)
    reporter.flush()
    result = train(config, text, callback=reporter.callback, should_stop=reporter.should_stop, resume=True)
    reporter.upload()
    if reporter.cancelled:
        with session_scope() as session:
            run = cancel_run(session, claimed.run_id)
            return summary(run)
    return finish(claimed, out_dir, storage, result, reporter.latest, gate)


def _refuse(claimed: ClaimedRun, message: str) -> dict:
    """End a run before its first step: its text has nothing to learn (the message has the numbers)."""
    log.info("run %s refused before training: %s", claimed.run_id, message)
    with session_scope() as session:
        return summary(fail_run(session, claimed.run_id, message[:2000]))


def _active_model(checkpoint: Checkpoint | None, storage: Storage):
    """The persona's active model, loaded to be scored by the gate; None when there is none or it cannot be
    read (the gate then compares with the base alone, and says so)."""
    from trainer.checkpoint import from_bytes

    if checkpoint is None:
        return None
    try:
        return from_bytes(storage.get(checkpoint.storage_key), checkpoint.storage_key)
    except Exception as e:  # noqa: BLE001 - a missing or unreadable file must not fail the new run
        log.warning("active checkpoint %s not scored by the gate: %s", checkpoint.id, e)
        return None


def _judge(gate, best, active: Checkpoint | None, storage: Storage, val_loss, unigram):
    """The gate's verdict on `best` against the base and the active checkpoint, on the same held-out text."""
    from trainer.gate import judge

    return judge(gate, best.family, best, _active_model(active, storage), val_loss, unigram)


def finish(claimed: ClaimedRun, out_dir: Path, storage: Storage, result, progress: dict, gate) -> dict:
    """Store the best checkpoint (a row), loss.png and a sample; promote it when it beats both the base and the
    active model on the run's held-out text (trainer.gate)."""
    from core.contracts import SamplingParams
    from trainer.checkpoint import load
    from trainer.sample import generate as sample_text

    best_path = out_dir / "best.safetensors"
    best = load(best_path)
    val_loss = _finite(best.meta.get("metrics", {}).get("val_loss"))
    sample = sample_text(best.model, best.tokenizer, [""],
                      SamplingParams(max_tokens=SAMPLE_TOKENS, temperature=0.8, seed=claimed.run_id))[0].text
    plot = out_dir / "loss.png"
    if plot.exists():
        storage.put_file(loss_plot_key(claimed.run_id), plot)
    metrics = {"val_loss": val_loss, **{k: _finite(v) for k, v in best.meta.get("metrics", {}).items()},
               "steps": result.steps, "elapsed": round(result.elapsed, 1), "stop_reason": result.stop_reason,
               "resumed_from": progress.get("resumed_from", 0), "attempt": claimed.attempt,
               "loss_png": loss_plot_key(claimed.run_id) if plot.exists() else None, "sample": sample,
               "warnings": result.warnings}
    unigram = _finite(best.meta.get("metrics", {}).get("unigram_loss"))
    with session_scope() as session:  # scored outside the lock below: it takes seconds
        scored = session.get(Persona, claimed.persona_id).active_checkpoint
        scored_id = scored.id if scored is not None else None
        verdict = _judge(gate, best, scored, storage, val_loss, unigram)
    with session_scope() as session:
        run = session.get(TrainingRun, claimed.run_id)
        # lock the persona so two runs finishing together compare against each other's promotion
        persona = session.scalars(select(Persona).where(Persona.id == claimed.persona_id).with_for_update()).one()
        active = persona.active_checkpoint
        if (active.id if active is not None else None) != scored_id:  # promoted meanwhile: score the new one
            verdict = _judge(gate, best, active, storage, val_loss, unigram)
        promote = verdict.passed
        ckpt = session.scalars(select(Checkpoint).where(Checkpoint.run_id == run.id,
                                                        Checkpoint.name == "best")).first()
        if ckpt is None:  # (a redelivery after a crash right here finds the row already made)
            ckpt = save_checkpoint(session, storage, persona, run, "best", best_path.read_bytes(),
                                   val_loss=val_loss, metrics=best.meta.get("metrics", {}), activate=promote)
        elif promote:
            set_active_checkpoint(session, persona, ckpt)
        metrics.update(checkpoint_id=ckpt.id, promoted=promote, gate=verdict.reason, gate_losses=verdict.losses,
                       previous_checkpoint_id=active.id if active is not None else None)
        return summary(succeed_run(session, run, metrics=metrics))


"""Where a sweep's trials live: one Optuna study in a storage (a SQLite file in the sweep folder by
default, or any database URL Optuna accepts, e.g. postgresql+psycopg://user:pw@host/db).

Every sweep kind is the same study: its trials are enqueued up front (a grid's variants, a random
search's draws, a tpe search's empty slots that the sampler fills when a worker takes one), each
carrying its variant's name, so any number of workers on any number of machines take them from the
queue, each exactly once. Workers record heartbeats while they train; a worker that dies leaves a
trial whose heartbeat goes stale, which the next worker that looks fails and re-enqueues with the same
name (Optuna's retry callback), so it resumes its run folder from its last saved epoch.

The database's password never leaves this module: messages show the URL with `***` for it.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cifarlab.experiments.spec import SweepError, SweepSpec, config_hash

STUDY_DB = "optuna.db"
MAX_RETRIES = 3  # a trial whose worker dies this often is left failed: it may be what kills them
ENQUEUE_STALE_SECONDS = 120  # an enqueuing worker that held the queue's lock this long has died


@dataclass(frozen=True)
class Storage:
    url: str  # as given: holds the password, never printed
    shown: str  # the URL with the password masked
    local_file: Path | None  # the sweep folder's SQLite file, when it is the default
    heartbeat: int  # seconds between a worker's heartbeats; a trial is stale after 3 of them

    def hide(self, text: str) -> str:
        """`text` with the password masked (a driver's message may quote the URL)."""
        from sqlalchemy.engine import make_url

        password = make_url(self.url).password
        return text.replace(self.url, self.shown).replace(str(password), "***") if password else text.replace(self.url, self.shown)


def require_optuna() -> Any:
    try:
        import optuna
    except ImportError:
        raise SweepError("sweeps keep their trials in an Optuna study: pip install 'cifarlab[search]'") from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # our log says what happens to each trial, once
    return optuna


def storage_for(url: str | None, folder: Path, heartbeat: int = 30) -> Storage:
    """The storage a sweep uses: `url`, or the SQLite file in `folder`; SweepError for a URL that is not one."""
    if heartbeat < 1:
        raise SweepError(f"--heartbeat {heartbeat}: must be at least 1 second")
    if url is None:
        path = (folder / STUDY_DB).resolve()
        return Storage(f"sqlite:///{path}", f"sqlite:///{path}", path, heartbeat)
    require_optuna()
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError):
        raise SweepError(f"--storage {url.split('@')[-1]!r}: not a database URL (e.g. postgresql+psycopg://user@host/db)") from None
    return Storage(url, parsed.render_as_string(hide_password=True), None, heartbeat)


@contextlib.contextmanager
def database_errors(storage: Storage, doing: str) -> Iterator[None]:
    """Database failures (unreachable, dropped mid-sweep, a damaged file) as one line naming the storage."""
    from optuna.exceptions import StorageInternalError
    from sqlalchemy.exc import NoSuchModuleError, SQLAlchemyError

    try:
        yield
    except NoSuchModuleError as e:
        raise SweepError(f"--storage {storage.shown}: no database driver for it ({e})") from None
    except ImportError as e:
        raise SweepError(f"--storage {storage.shown}: its driver is not installed ({e.name or e}); pip install 'cifarlab[search]'") from None
    except (SQLAlchemyError, StorageInternalError) as e:  # Optuna wraps a failed commit's error in its own
        raise SweepError(
            storage.hide(
                f"{storage.local_file or storage.shown}: {doing}: {_reason(e)}"
                f"{'; move the file away or name another --out' if storage.local_file else ''}"
            )
        ) from None


def _reason(error: BaseException) -> str:
    """The database's own words: a driver error's message, under SQLAlchemy's and Optuna's wrappers."""
    while error.__cause__ is not None and not getattr(error, "orig", None):
        error = error.__cause__
    error = getattr(error, "orig", None) or error
    return " ".join(str(error).split()) or type(error).__name__


def open_storage(storage: Storage, create: bool = True) -> Any:
    """Optuna's RDBStorage with heartbeats and the retry callback; made (tables too) if `create`."""
    optuna = require_optuna()
    from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback

    if storage.local_file and not create and not storage.local_file.exists():
        return None
    kwargs = _engine_options(storage)
    from sqlalchemy.exc import IntegrityError, ProgrammingError

    for attempt in range(3):
        try:
            with database_errors(storage, "cannot open the study's database"), quiet(optuna):
                return RDBStorage(
                    storage.url,
                    engine_kwargs=kwargs,
                    heartbeat_interval=storage.heartbeat,
                    grace_period=3 * storage.heartbeat,
                    skip_table_creation=not create,
                    heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRIES),
                )
        except SweepError as e:
            # workers starting together on a new database race to make its tables: the loser finds them made
            if attempt == 2 or not isinstance(e.__context__, (IntegrityError, ProgrammingError, optuna.exceptions.StorageInternalError)):
                raise
            time.sleep(1 + attempt)


def _engine_options(storage: Storage) -> dict[str, Any]:
    from sqlalchemy.engine import make_url

    backend = make_url(storage.url).get_backend_name()
    if backend == "sqlite":  # several local workers write one file: wait for its lock rather than fail
        return {"connect_args": {"timeout": 60}}
    if backend == "postgresql":  # an unreachable server answers within seconds, not the driver's default minutes
        return {"pool_pre_ping": True, "connect_args": {"connect_timeout": 10}}
    return {"pool_pre_ping": True}


@contextlib.contextmanager
def quiet(optuna: Any) -> Iterator[None]:
    """Without Optuna's warning that heartbeats are experimental (it says nothing a user can act on)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        yield


def spec_hash(fingerprint: dict) -> str:
    return hashlib.sha256(json.dumps(fingerprint, sort_keys=True).encode()).hexdigest()


def _difference(saved: dict, wanted: dict) -> str:
    """The first thing a saved fingerprint and this spec's disagree on, as 'NAME=OLD, the spec now says NEW'."""
    for part in ("method", "base", "train_subset"):
        if saved.get(part) != wanted[part]:
            return f"{part}={saved.get(part)!r}, the spec now says {wanted[part]!r}"
    for part, label in (("config", ""), ("space", "[search.space] ")):
        old, new = saved.get(part) or {}, wanted[part] or {}
        for key in sorted(set(old) | set(new)):
            if old.get(key) != new.get(key):
                return f"{label}{key}={old.get(key)!r}, the spec now says {new.get(key)!r}"
    return "another spec"


def open_study(rdb: Any, storage: Storage, spec: SweepSpec, create: bool = True) -> Any:
    """The spec's study, made if need be (and `create`); SweepError if another spec made it, None if
    it does not exist and not `create`."""
    optuna = require_optuna()
    wanted = spec.fingerprint()
    with database_errors(storage, f"cannot open study {spec.study_name!r}"):
        try:
            study = optuna.load_study(study_name=spec.study_name, storage=rdb)
        except KeyError:
            if not create:
                return None
            study = optuna.create_study(storage=rdb, study_name=spec.study_name, direction="maximize", load_if_exists=True)
            if not study.user_attrs.get("spec_hash"):  # the first of several workers to make it says whose it is
                study.set_user_attr("sweep", wanted)
                study.set_user_attr("spec_hash", spec_hash(wanted))
        saved = _spec_hash_of(study)
    if saved is None:
        raise SweepError(
            f"{storage.local_file or storage.shown}: study {spec.study_name!r} was not made by a cifarlab sweep; name another study or storage"
        )
    if saved != spec_hash(wanted):
        raise SweepError(
            f"{storage.local_file or storage.shown}: study {spec.study_name!r} was made with "
            f"{_difference(study.user_attrs.get('sweep', {}), wanted)}; use another --out, study or --storage"
        )
    return study


def _spec_hash_of(study: Any) -> str | None:
    """The study's spec hash, waiting a moment for it: a worker that has just made the study sets it next."""
    for _ in range(25):
        saved = study.user_attrs.get("spec_hash")
        if saved is not None or study.get_trials(deepcopy=False):
            return saved
        time.sleep(0.2)
    return None


# ---------------------------------------------------------------- the queue


def trial_attrs(spec: SweepSpec, name: str) -> dict[str, Any]:
    """What an enqueued trial carries: its variant's name and values (a tpe slot's come from its sampler)."""
    variant = next((v for v in spec.variants if v.name == name), None)
    if variant is None:
        return {"variant": name}
    return {"variant": name, "overrides": json.loads(json.dumps(variant.overrides, default=str)), "config_hash": config_hash(variant.config)}


def wanted_names(spec: SweepSpec) -> list[str]:
    from cifarlab.experiments.space import trial_name

    return [v.name for v in spec.variants] if spec.method != "tpe" else [trial_name(i) for i in range(spec.size)]


def enqueue(rdb: Any, storage: Storage, study: Any, spec: SweepSpec, retry_failed: bool = False) -> int:
    """Put the spec's variants that the study does not hold yet into its queue (a failed one again
    if `retry_failed`), under a lock that one worker holds at a time; returns how many."""
    optuna = require_optuna()
    with database_errors(storage, "cannot enqueue the trials"), _enqueue_lock(optuna, rdb, spec.study_name):
        held = latest_trials(study.get_trials(deepcopy=False))
        for name, trial in held.items():
            _check_same_variant(storage, spec, name, trial)
        again = {n for n, t in held.items() if retry_failed and t.state == optuna.trial.TrialState.FAIL}
        missing = [name for name in wanted_names(spec) if name not in held or name in again]
        for name in missing:
            study.enqueue_trial({}, user_attrs=trial_attrs(spec, name))
    return len(missing)


def _check_same_variant(storage: Storage, spec: SweepSpec, name: str, trial: Any) -> None:
    saved = trial.user_attrs.get("config_hash")
    variant = next((v for v in spec.variants if v.name == name), None)
    if saved and variant is not None and saved != config_hash(variant.config):
        raise SweepError(
            f"{storage.local_file or storage.shown}: study {spec.study_name!r} ran variant {name!r} with "
            f"{trial.user_attrs.get('overrides')}, the spec now gives it other settings; use another study or --out"
        )


@contextlib.contextmanager
def _enqueue_lock(optuna: Any, rdb: Any, name: str) -> Iterator[None]:
    """A lock in the database itself (a marker study: its unique name makes creating it atomic), so
    that workers starting together on several machines enqueue each variant once."""
    marker = f"{name}~enqueueing"
    deadline = time.monotonic() + 2 * ENQUEUE_STALE_SECONDS
    first_seen: float | None = None  # a holder that died before stamping its marker is timed from here
    while True:
        try:
            optuna.create_study(storage=rdb, study_name=marker).set_user_attr("since", time.time())
            break
        except optuna.exceptions.DuplicatedStudyError:
            first_seen = first_seen or time.time()
            since = _marker_since(optuna, rdb, marker) or first_seen
            if time.time() - since > ENQUEUE_STALE_SECONDS:
                with contextlib.suppress(KeyError):
                    optuna.delete_study(study_name=marker, storage=rdb)  # its holder died
            elif time.monotonic() > deadline:
                raise SweepError(f"study {name!r}: another worker has been enqueuing its trials for minutes") from None
            time.sleep(0.2)
    try:
        yield
    finally:
        with contextlib.suppress(KeyError):
            optuna.delete_study(study_name=marker, storage=rdb)


def _marker_since(optuna: Any, rdb: Any, marker: str) -> float | None:
    try:
        return optuna.load_study(study_name=marker, storage=rdb).user_attrs.get("since")
    except KeyError:  # let go of between our two calls
        return None


def latest_trials(trials: list) -> dict[str, Any]:
    """Each variant's trial that counts: its finished one if any, else its latest (a retry follows the trial it retries)."""
    best: dict[str, Any] = {}
    for t in sorted(trials, key=lambda t: t.number):
        name = t.user_attrs.get("variant")
        if name is None:
            continue
        if name not in best or best[name].state.name != "COMPLETE":
            best[name] = t
    return best


@contextlib.contextmanager
def taking(storage: Storage) -> Iterator[None]:
    """Held while a worker takes a trial. A database server decides between workers asking at once
    (Optuna's row lock); SQLite ignores that lock, and two workers once both moved one waiting trial
    to RUNNING, so on SQLite workers take trials one at a time under a file lock beside the database."""
    from sqlalchemy.engine import make_url

    url = make_url(storage.url)
    if url.get_backend_name() != "sqlite" or not url.database:
        yield
        return
    with open(f"{url.database}.take-lock", "a") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)  # released when the file closes
        yield


def take_trial(study: Any, rdb: Any) -> Any:
    """A waiting trial of the queue, now RUNNING for this worker alone (the database decides between
    workers asking at once), with its first heartbeat; None when the queue is empty. Never makes a trial."""
    optuna = require_optuna()
    study_id = rdb.get_study_id_from_name(study.study_name)
    for frozen in rdb.get_all_trials(study_id, deepcopy=False, states=(optuna.trial.TrialState.WAITING,)):
        trial_id = rdb.get_trial_id_from_study_id_trial_number(study_id, frozen.number)
        try:
            if not rdb.set_trial_state_values(trial_id, state=optuna.trial.TrialState.RUNNING):
                continue
        except optuna.exceptions.UpdateFinishedTrialError:
            continue
        rdb.record_heartbeat(trial_id)  # at once: a RUNNING trial without one is never found stale
        return optuna.trial.Trial(study, trial_id)
    return None


def fail_orphans(study: Any, rdb: Any) -> int:
    """Trials left RUNNING in a study no worker can be running (the folder's lock is held): failed and
    retried now, rather than after their heartbeats' grace period."""
    optuna = require_optuna()
    running = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
    for frozen in running:
        trial_id = rdb.get_trial_id_from_study_id_trial_number(rdb.get_study_id_from_name(study.study_name), frozen.number)
        if rdb.set_trial_state_values(trial_id, state=optuna.trial.TrialState.FAIL):
            rdb.get_heartbeat_stale_trial_callback()(study, rdb.get_trial(trial_id))
    return len(running)


@contextlib.contextmanager
def heartbeat(rdb: Any, trial: Any) -> Iterator[None]:
    """Record the trial's heartbeat every interval while it trains (a thread: training holds the main one)."""
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(rdb.get_heartbeat_interval()):
            with contextlib.suppress(Exception):  # a database that blinks: the next beat tries again
                rdb.record_heartbeat(trial._trial_id)

    thread = threading.Thread(target=beat, name=f"heartbeat-{trial.number}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()

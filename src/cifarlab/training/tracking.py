"""Optional MLflow tracking (TrainConfig.mlflow, `cifarlab train --mlflow [URI]`; docs/mlflow.md).

A training with `mlflow` set logs to one MLflow run: the resolved config as parameters (model
options flattened, `model_options.widths`), each epoch's metrics as it ends (step = epoch), the
results, tags, and at the end config.json, results.json, report.html (when there is one) and the
trained model as a pyfunc model (inference/mlflow_model.py loads it). The run folder stays the
source of truth: MLflow mirrors it.

- The MLflow run's id is kept in RUNDIR/mlflow.json, written with the first epoch, so a resume
  continues the same MLflow run and logs each epoch once (it first logs the checkpoint's epochs
  the server is missing).
- A sweep is a parent run (`sweep_parent_run`): its id travels in the environment
  (PARENT_ENV, inherited by sweep worker processes) and each variant's run becomes its child.
- Failures cost no training: an unreachable server at start is a one-line TrackingError before
  any data is loaded (with mlflow_optional, a warning and local-only training); a call that
  fails later is counted, training goes on, and the closing line names what was not logged.
- Under torchrun only rank 0 logs. mlflow is imported lazily (the `mlflow` extra).
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from cifarlab import __version__
from cifarlab.common import distributed
from cifarlab.common.checkpoint import load_checkpoint
from cifarlab.common.files import atomic_write_json
from cifarlab.common.rundir import CHECKPOINT, CONFIG, RESULTS, RunDir
from cifarlab.errors import CifarlabError
from cifarlab.training.config import dotted_keys

DEFAULT_STORE = "default"  # TrainConfig.mlflow: MLflow's own default (MLFLOW_TRACKING_URI, else ./mlflow.db)
RUN_FILE = "mlflow.json"  # the MLflow run of a run folder (or a sweep folder's parent run)
REPORT = "report.html"
PARENT_ENV = "CIFARLAB_MLFLOW_PARENT_RUN_ID"
EXPERIMENT = "cifarlab"  # unless MLFLOW_EXPERIMENT_NAME names another
MODEL_PATH = "model"  # the artifact folder of the logged pyfunc model
MODEL_LOADER = "cifarlab.inference.mlflow_model"  # imported by MLflow when it loads the model, never here
# MLflow retries a failed request 7 times with exponential backoff and waits 120 s for an answer:
# minutes per call against a server that went away. Shorter, unless the user set their own.
HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}
GIVE_UP_AFTER = 3  # failed calls in a row before the rest are skipped (and counted as not logged)
TOTALS = {"train_seconds": "total_train_seconds"}  # results whose name an epoch metric already has


class TrackingError(CifarlabError, RuntimeError):
    """MLflow tracking was asked for but cannot start; one line."""


def require_mlflow(flag: str = "--mlflow"):
    try:
        import mlflow
    except ImportError:
        raise TrackingError(f'{flag} needs the mlflow package: pip install "cifarlab[mlflow]"') from None
    return mlflow


def connect(uri: str, optional: bool = False, log: Callable[[str], None] = print):
    """An MlflowClient for `uri` ("default": MLflow's own store) once the store answered; None with
    `optional` when it does not (after a warning), else TrackingError naming the URI."""
    require_mlflow()
    from mlflow.tracking import MlflowClient

    for name, value in HTTP_DEFAULTS.items():
        os.environ.setdefault(name, value)
    client = MlflowClient(tracking_uri=None if uri == DEFAULT_STORE else uri)
    try:
        client.search_experiments(max_results=1)
    except Exception as e:
        where = f"the MLflow tracking store {client.tracking_uri}"
        if optional:
            log(f"mlflow: cannot reach {where} ({first_line(e)}); training without it (mlflow_optional)")
            return None
        raise TrackingError(f"cannot reach {where} ({first_line(e)}); start the server, or pass --mlflow-optional to train without it") from None
    return client


def first_line(error: BaseException) -> str:
    text = str(error).strip()
    line = text.splitlines()[0] if text else type(error).__name__
    return line if len(line) <= 160 else line[:157] + "..."


def experiment_id(client) -> str:
    name = os.environ.get("MLFLOW_EXPERIMENT_NAME") or EXPERIMENT
    experiment = client.get_experiment_by_name(name)
    return experiment.experiment_id if experiment is not None else client.create_experiment(name)


def config_params(config: dict, train_subset: int | None) -> dict[str, str]:
    """The resolved config as MLflow parameters (strings); the mlflow settings themselves left out."""
    params = {k: v for k, v in dotted_keys(config).items() if not k.startswith("mlflow")}
    params["train_subset"] = train_subset
    return {k: json.dumps(v) if isinstance(v, (list, dict, bool)) or v is None else str(v) for k, v in params.items()}


def numbers(values: dict) -> dict[str, float]:
    """The numbers of a (nested) record under dotted names; booleans, text and None left out."""
    return {k: float(v) for k, v in dotted_keys(values).items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def epoch_metrics(record: dict) -> dict[str, float]:
    return {k: v for k, v in numbers(record).items() if k != "epoch"}


def result_metrics(results: dict) -> dict[str, float]:
    return {TOTALS.get(k, k): v for k, v in numbers(results).items()}


class Tracker:
    """One training's MLflow run. Every call to the server goes through `_call`, which counts a
    failure instead of raising it."""

    def __init__(self, client, run: RunDir, config: dict, log: Callable[[str], None]):
        self.client, self.run, self.config, self.log = client, run, config, log
        self.run_id: str | None = None
        self.calls = 0
        self.missed: list[str] = []
        self.failures_in_a_row = 0
        self.last_error = ""

    def _call(self, what: str, fn: Callable, *args, **kwargs) -> Any:
        self.calls += 1
        if self.failures_in_a_row >= GIVE_UP_AFTER or (self.run_id is None and what != "the run"):
            self.missed.append(what)
            return None
        try:
            result = fn(*args, **kwargs)
        except Exception as e:
            if not self.missed:
                self.log(f"mlflow: could not log {what} ({first_line(e)}); training goes on")
            self.missed.append(what)
            self.failures_in_a_row += 1
            self.last_error = first_line(e)
            return None
        self.failures_in_a_row = 0
        return result

    # ------------------------------------------------------------ the run's life

    def begin(self, job, resume: bool) -> None:
        """Create the MLflow run (or reopen a resumed run's), then log parameters, tags and the
        epochs of the checkpoint the server is missing."""
        saved = self._saved_run_id() if resume else None
        if saved is not None:
            self.run_id = saved
            self._call("the run's status", self.client.update_run, saved, status="RUNNING")
        else:
            self.run_id = self._call("the run", self._create_run)
        facts = self.run.config()
        self._log_batch("parameters and tags", params=config_params(facts["train"], facts.get("train_subset")), tags=run_tags(job, self.run))
        logged = self._logged_epochs() if job.history else set()
        if logged is not None:  # None: unknown, so none (rather than twice)
            for record in job.history:
                if record["epoch"] not in logged:
                    self.epoch(record)

    def _create_run(self) -> str:
        tags = {"mlflow.source.name": "cifarlab train", "mlflow.source.type": "LOCAL"}
        if os.environ.get(PARENT_ENV):
            tags["mlflow.parentRunId"] = os.environ[PARENT_ENV]
        run = self.client.create_run(experiment_id(self.client), run_name=self.run.path.name, tags=tags)
        return run.info.run_id

    def _saved_run_id(self) -> str | None:
        """The MLflow run a resumed run folder logged to, if it logged to this same store."""
        path = self.run.file(RUN_FILE)
        try:
            saved = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        same_store = isinstance(saved, dict) and saved.get("tracking_uri") == self.client.tracking_uri
        return saved.get("run_id") if same_store else None

    def _logged_epochs(self) -> set[int] | None:
        """The epochs the server has (None when it cannot say)."""
        history = self._call("the logged epochs", self.client.get_metric_history, self.run_id, "train_loss")
        return None if history is None else {m.step for m in history}

    def epoch(self, record: dict) -> None:
        """An epoch's metrics as it ends (the training's on_epoch callback); the run id into
        RUNDIR/mlflow.json with the first one, when the folder holds a checkpoint to resume."""
        if self.run_id is not None and not self.run.file(RUN_FILE).exists():
            atomic_write_json(self.run.file(RUN_FILE), {"run_id": self.run_id, "tracking_uri": self.client.tracking_uri})
        self._log_batch(f"epoch {record['epoch']}'s metrics", metrics=epoch_metrics(record), step=record["epoch"])

    def finish(self, results: dict) -> None:
        """Results, artifacts and the model; then the run FINISHED."""
        self._log_batch("results", metrics=result_metrics(results), step=results.get("epochs", 0))
        for name in (CONFIG, RESULTS, REPORT):
            if self.run.file(name).exists():
                self._call(name, self.client.log_artifact, self.run_id, str(self.run.file(name)))
        self._call("the model", self._log_model)
        if self.config.get("mlflow_register"):
            name = self.config["mlflow_register"]
            self._call(f"registered model {name}", register_model, self.client, name, self.run_id)
        self.end("FINISHED")

    def end(self, status: str) -> None:
        self._call("the run's end", self.client.set_terminated, self.run_id, status)
        self.log(self.closing_line())

    def closing_line(self) -> str:
        where = f"MLflow run {self.run_id} at {self.client.tracking_uri}"
        if not self.missed:
            return f"mlflow: everything logged to {where}"
        return (
            f"mlflow: {len(self.missed)} of {self.calls} logging calls failed ({self.last_error or 'skipped'}); "
            f"not logged: {', '.join(self.missed)}; the run folder {self.run.path} is complete"
        )

    def _log_batch(self, what: str, metrics: dict | None = None, step: int = 0, params: dict | None = None, tags: dict | None = None) -> None:
        from mlflow.entities import Metric, Param, RunTag

        now = int(time.time() * 1000)
        self._call(
            what,
            self.client.log_batch,
            self.run_id,
            metrics=[Metric(k, v, now, step) for k, v in (metrics or {}).items()],
            params=[Param(k, v) for k, v in (params or {}).items()],
            tags=[RunTag(k, v) for k, v in (tags or {}).items()],
        )

    def _log_model(self) -> None:
        with tempfile.TemporaryDirectory(prefix="cifarlab-mlflow-") as tmp:
            folder = save_pyfunc_model(self.run, Path(tmp))
            self.client.log_artifacts(self.run_id, str(folder), MODEL_PATH)


def run_tags(job, run: RunDir) -> dict[str, str]:
    from cifarlab.runtime import processor_name

    config = job.config
    return {
        "preset": config.preset,
        "model": config.model,
        "processor": processor_name(job.splits.train_x.device),
        "training_dtype": job.train_dtype,
        "torch_version": torch.__version__,
        "cifarlab_version": __version__,
        "run_folder": str(run.path.resolve()),
        "world_size": str(distributed.world_size()),
    }


# ---------------------------------------------------------------- the model


def save_pyfunc_model(run: RunDir, into: Path) -> Path:
    """The run's trained model as an MLflow pyfunc model folder under `into`: a model-only
    checkpoint (weights, metadata, epoch, config) loaded by MODEL_LOADER, with a signature (uint8
    images in; the class and each class's probability out) and an input example."""
    import mlflow.pyfunc
    import numpy as np
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema, TensorSpec

    state = load_checkpoint(run.file(CHECKPOINT))
    data = into / "data"
    data.mkdir()
    torch.save({k: state[k] for k in ("model", "meta", "epoch", "config") if k in state}, data / CHECKPOINT)
    classes = state["meta"]["classes"]
    signature = ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.uint8), (-1, 32, 32, 3))]),
        outputs=Schema([ColSpec("string", "class"), *(ColSpec("float", name) for name in classes)]),
    )
    example = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    folder = into / MODEL_PATH
    mlflow.pyfunc.save_model(
        str(folder),
        loader_module=MODEL_LOADER,
        data_path=str(data),
        signature=signature,
        input_example=example,
        pip_requirements=model_requirements(),
    )
    return folder


def model_requirements() -> list[str]:
    """What serving the model needs: cifarlab itself (MODEL_LOADER) and the torch it trained with."""
    import mlflow

    return [f"cifarlab=={__version__}", f"torch=={torch.__version__.split('+')[0]}", f"mlflow=={mlflow.__version__}", "numpy", "pandas"]


def register_model(client, name: str, run_id: str) -> None:
    """A new version of registered model `name` (created if new) from this run's logged model."""
    from mlflow.exceptions import MlflowException

    try:
        client.create_registered_model(name)
    except MlflowException as e:
        if e.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    source = f"{client.get_run(run_id).info.artifact_uri}/{MODEL_PATH}"
    client.create_model_version(name, source, run_id=run_id)


# ---------------------------------------------------------------- hooks for the training loop


class NotTracking:
    """The tracker of a training without mlflow (or not on rank 0): does nothing."""

    def begin(self, job, resume: bool) -> None:
        pass

    def on_epoch(self, chained):
        return chained

    def finish(self, results: dict) -> dict:
        return results


class Tracking:
    """train.py's hooks: `begin` once the run is prepared, `on_epoch` wraps the epoch callback,
    `finish` after results.json; ending any other way marks the MLflow run FAILED or KILLED."""

    def __init__(self, tracker: Tracker):
        self.tracker = tracker
        self.done = False  # finish ran: the run is ended, whatever follows

    def begin(self, job, resume: bool) -> None:
        self.tracker.begin(job, resume)

    def on_epoch(self, chained: Callable[[dict], None] | None) -> Callable[[dict], None]:
        def both(record: dict) -> None:
            self.tracker.epoch(record)
            if chained is not None:
                chained(record)

        return both

    def finish(self, results: dict) -> dict:
        self.tracker.finish(results)
        self.done = True
        return results


@contextlib.contextmanager
def tracking(run: RunDir, config, log: Callable[[str], None]) -> Iterator[NotTracking | Tracking]:
    """Connect (before any data is loaded) when `config.mlflow` asks for it, on rank 0 alone."""
    if not config.mlflow or not distributed.is_main():
        yield NotTracking()
        return
    client = connect(config.mlflow, config.mlflow_optional, log)
    if client is None:
        yield NotTracking()
        return
    hooks = Tracking(Tracker(client, run, config.to_dict(), log))
    try:
        yield hooks
    except BaseException as e:
        if hooks.tracker.run_id is not None and not hooks.done:
            hooks.tracker.end("KILLED" if isinstance(e, KeyboardInterrupt) else "FAILED")
        raise


# ---------------------------------------------------------------- sweeps


@contextlib.contextmanager
def sweep_parent_run(folder: Path, config, log: Callable[[str], None], artifacts: tuple[str, ...] = ()) -> Iterator[None]:
    """A sweep as one parent MLflow run, each variant's (or trial's) run its child: while the sweep
    runs, PARENT_ENV names the parent to every training, in this process and in the worker
    processes it starts. Its id is kept in FOLDER/mlflow.json, so a restarted sweep keeps its
    parent. At the end the parent gets `artifacts` (files of the folder: the leaderboard)."""
    if not config.mlflow:
        yield
        return
    client = connect(config.mlflow, config.mlflow_optional, log)
    if client is None:
        yield
        return
    run_id = _parent_run_id(client, folder)
    before = os.environ.get(PARENT_ENV)
    os.environ[PARENT_ENV] = run_id
    status = "FAILED"
    try:
        yield
        status = "FINISHED"
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        if before is None:
            os.environ.pop(PARENT_ENV, None)
        else:
            os.environ[PARENT_ENV] = before
        _end_parent(client, run_id, [folder / name for name in artifacts], status, log)


def _parent_run_id(client, folder: Path) -> str:
    """The sweep folder's parent run: the one mlflow.json names on this store, else a new one."""
    path = folder / RUN_FILE
    try:
        saved = json.loads(path.read_text())
        if saved.get("tracking_uri") == client.tracking_uri:
            client.update_run(saved["run_id"], status="RUNNING")
            return saved["run_id"]
    except (OSError, ValueError, AttributeError, KeyError):
        pass
    tags = {"mlflow.source.name": "cifarlab sweep", "mlflow.source.type": "LOCAL", "sweep_folder": str(folder.resolve())}
    run_id = client.create_run(experiment_id(client), run_name=folder.name, tags=tags).info.run_id
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, {"run_id": run_id, "tracking_uri": client.tracking_uri})
    return run_id


def _end_parent(client, run_id: str, artifacts: list[Path], status: str, log: Callable[[str], None]) -> None:
    try:
        for path in artifacts:
            if path.exists():
                client.log_artifact(run_id, str(path))
        client.set_terminated(run_id, status)
    except Exception as e:  # the variants' runs are logged; the sweep's own ending is not worth a traceback
        log(f"mlflow: could not end the sweep's parent run {run_id} ({first_line(e)})")
        return
    log(f"mlflow: sweep logged as parent run {run_id} at {client.tracking_uri}")

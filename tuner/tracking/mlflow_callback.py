"""MLflow tracking from the driver: a nested child run per trial, under the study's parent run
(`tuner.tracking.study_run`).

Workers never talk to the tracking server: the `MlflowTracking` callback runs in the driver,
reads each trial's curve from the driver's recorder (`RecordedTrials`), and writes per-epoch
metrics in batches (`log_batch`, step = epoch), never a call per key. At a trial's end it logs
the summary at the best epoch, the diagnosis and a learning-curve figure, and closes the run
FINISHED (FAILED for errored trials). The trial -> run ids are saved in the Ray run folder, so a
resumed study continues the same runs.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ray.tune import Callback

from trainables import metrics as m
from tuner.cluster.redaction import redact, without_passwords
from tuner.cluster.storage import relocated
from tuner.results import outcomes
from tuner.results.figures import FigureProcess
from tuner.spec.job_spec import JobSpec
from tuner.tracking import schema
from tuner.tracking.buffer import PENDING, BufferedWriter
from tuner.tracking.run_writes import (
    MAX_TAG_LENGTH,
    as_params,
    epoch_metrics,
    log_batch,
    log_trial_end,
    now_ms,
)
from tuner.tracking.runs import client_for
from tuner.tracking.writer_thread import WriterThread

if TYPE_CHECKING:
    from tuner.results.trials import RecordedTrials, TrialRecord

RUN_IDS_FILE = "mlflow_runs.json"
log = logging.getLogger(__name__)
#: the run ids file is rewritten whole: at every new run up to this many runs, then at most every
#: RUN_IDS_SAVE_EVERY_S and at every flush (a restore claims runs the file lacks: claim_orphans)
RUN_IDS_SAVED_EVERY_RUN = 100
RUN_IDS_SAVE_EVERY_S = 5.0
#: studies of more trials log no learning-curve PNG per trial: drawing one costs ~90 ms of CPU
#: and an upload, and the writer thread waits for both, so at hundreds of trials the figures
#: held every later write back (400 trials at 16 slots: the last results reached MLflow 105 s
#: after the last trial ended). MLflow's own charts show each run's curves from its metrics, and
#: the study's report.html every trial's
CURVE_FIGURES_UP_TO = 200
#: an errored trial's run holds Ray's whole traceback as this text artifact (the `error` tag
#: has its last line)
ERROR_ARTIFACT = "error.txt"


class MlflowTracking(Callback):
    """Ray Tune callback on the driver: one nested MLflow run per trial, written in batches.

    With `background` (as a study runs it), the Tune hooks only queue work for a `WriterThread`,
    which does every MLflow write in order, so the driver's event loop (and with it the next epoch
    of every trial) does not wait on the tracking server, SQLite or a figure, unless the writer
    falls too far behind. `wait` blocks until the queue is done; the methods called from outside
    the hooks wait first.

    A trial that ended before the thread created its run (the thread was behind) gets its run
    in four requests: created, its dataset inputs, one batch (params, every epoch, the summary,
    the tags), closed.
    """

    def __init__(
        self,
        spec: JobSpec,
        recorder: RecordedTrials,
        parent_run_id: str,
        experiment_id: str,
        run_ids_path: Path,
        flush_interval_s: float = 5.0,
        background: bool = False,
        inputs: Sequence[dict[str, Any]] = (),
    ):
        self.spec, self.recorder = spec, recorder
        self.inputs = list(inputs)  # the dataset inputs each trial's run logs (tracking.inputs)
        self.parent_run_id, self.experiment_id = parent_run_id, experiment_id
        self.run_ids_path = run_ids_path
        self.flush_interval_s = flush_interval_s
        self.background = background  # write from a thread (a study does), or inline
        self.run_ids: dict[str, str] = load_run_ids(run_ids_path)
        self._init_runtime()

    #: rebuilt by `_init_runtime` (and the run ids re-read) when Ray restores the callback
    _NOT_PICKLED = frozenset(
        {"_pending", "_pending_params", "_logged", "_last_flush", "_client", "_writer"}
        | {"_writes", "_ids_saved_at", "_ids_unsaved"}
        | {"_figures", "open_runs", "run_ids", "_placements"}
    )

    def _init_runtime(self) -> None:
        """What lives only in this process: queues, the writer thread, runs open right now."""
        self._pending: dict[str, list] = {}  # run -> curve points not sent yet
        self._pending_params: dict[str, list] = {}  # run -> params not sent yet
        self._logged: dict[str, set[int]] = {}  # run -> epochs already sent
        self._placements: dict[str, tuple] = {}  # run -> (gpu ids, device) tagged
        self._last_flush = time.monotonic()
        self._ids_saved_at, self._ids_unsaved = time.monotonic(), False
        self._client = None
        self._writer: BufferedWriter | None = None
        self._writes = WriterThread()
        self._figures = FigureProcess()
        self.open_runs: set[str] = set()

    def __getstate__(self) -> dict[str, Any]:
        """Ray snapshots callbacks every few seconds: keep only what a restore needs (the run ids
        are re-read from their file)."""
        state = {k: v for k, v in self.__dict__.items() if k not in self._NOT_PICKLED}
        return {**state, "spec": without_passwords(self.spec)}  # Ray saves it in the results

    def __setstate__(self, state: dict[str, Any]) -> None:
        """Restored by Ray from a snapshot: take the run ids written since."""
        self.__dict__.update({"inputs": [], **state})  # a study started before inputs were logged
        self.run_ids_path = relocated(self.run_ids_path)
        self.run_ids = load_run_ids(self.run_ids_path)
        self._init_runtime()

    @property
    def client(self):
        """For reads; writes go through `writer`."""
        if self._client is None:
            self._client = client_for(self.spec.tracking.uri)
        return self._client

    @property
    def writer(self) -> BufferedWriter:
        """Every write, queued in the study folder while the server is unreachable."""
        if self._writer is None:
            self._writer = BufferedWriter(self.client, self.run_ids_path.parent)
            self._writer.on_resolve = self._resolved
        return self._writer

    def _resolved(self, placeholders: dict[str, str]) -> None:
        """Runs created during an outage got their real ids: remember those."""
        self.run_ids = {t: placeholders.get(r, r) for t, r in self.run_ids.items()}
        self.open_runs = {placeholders.get(r, r) for r in self.open_runs}
        self._logged = {placeholders.get(r, r): e for r, e in self._logged.items()}
        self._pending = {placeholders.get(r, r): p for r, p in self._pending.items()}
        self._pending_params = {placeholders.get(r, r): p for r, p in self._pending_params.items()}
        save_run_ids(self.run_ids_path, self.parent_run_id, self.run_ids)

    # ------------------------------------------------------------------ the writer thread

    def _submit(self, job, *args) -> None:
        """Queue a write (or, not in the background, do it now); a write that failed for good
        fails the study here, as it would have inline (an unreachable server is not a failure:
        the writer buffers)."""
        if self.background:
            self._writes.submit(job, *args)
            return
        self._writes.raise_failure()
        job(*args)

    def wait(self) -> None:
        """Block until every queued write is done (or buffered); re-raise a write that failed."""
        self._writes.wait()

    # ------------------------------------------------------------------ Ray Tune hooks

    def on_trial_start(self, iteration, trials, trial, **info) -> None:
        record = self.recorder.trials.get(trial.trial_id)
        if record is not None:
            self._submit(self._child_run, record)

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        record = self.recorder.trials.get(trial.trial_id)
        if record is None or m.EPOCH not in result:
            return
        earlier = [int(r[m.EPOCH]) for r in result.get(m.EARLIER_EPOCHS) or () if m.EPOCH in r]
        for epoch in (*earlier, int(result[m.EPOCH])):  # a restored trial's rows first
            self._submit(self._log_epoch, record, record.epochs[epoch], now_ms())

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        self._submit(self._end_trial, trial.trial_id, "FINISHED")

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        self._submit(self._end_trial, trial.trial_id, "FAILED", error_traceback(trial))

    def on_experiment_end(self, trials, **info) -> None:
        self._submit(self.flush)

    # ------------------------------------------------------------------ runs

    def _log_epoch(self, record: TrialRecord, row: dict[str, float], timestamp: int) -> None:
        run_id = self._child_run(record)
        logged = self._logged.setdefault(run_id, set())
        epoch = int(row[m.EPOCH])
        if epoch in logged:  # re-reported after a restore from an earlier checkpoint
            return
        logged.add(epoch)
        self._tag_placement(run_id, record)
        self._pending.setdefault(run_id, []).extend(epoch_metrics(row, timestamp))
        if time.monotonic() - self._last_flush >= self.flush_interval_s:
            self.flush()

    def _child_run(self, record: TrialRecord) -> str:
        """The trial's run: created on first sight, or reopened after a restore."""
        run_id = self.run_ids.get(record.trial_id)
        if run_id is None:
            run_id = self._create_child(record)
            self.run_ids[record.trial_id] = run_id
            self._save_run_ids(soon=len(self.run_ids) > RUN_IDS_SAVED_EVERY_RUN)
            # a new run holds no epoch: no need to ask MLflow which ones it lacks. The trial may
            # have reported some before this thread got here, or be a restored trial whose run
            # was lost with a killed driver's queue
            logged = self._logged.setdefault(run_id, set())
            if record.status is None:
                log_batch(self.writer, run_id, params=as_params(record.config))
                self._send_missing(run_id, record, logged)
            else:  # it ended before this thread got here: all of it goes with its end's batch
                self._pending_params[run_id] = as_params(record.config)
                self._pending.setdefault(run_id, []).extend(self._missing(record, logged))
        elif run_id not in self.open_runs:
            self.writer.update_run(run_id, status="RUNNING")
            self._resync(run_id, record)
        run_id = self.writer.real_id(run_id)  # its placeholder may have resolved meanwhile
        self.open_runs.add(run_id)
        return run_id

    def _tag_placement(self, run_id: str, record: TrialRecord) -> None:
        """Tag the GPU ids and device the trial's last epoch ran on (and a data-parallel
        trial's workers' nodes), when they change (a trial restored elsewhere is re-tagged)."""
        from mlflow.entities import RunTag

        placement = (record.gpu_ids, record.device, record.worker_nodes)
        if record.device is None or self._placements.get(run_id) == placement:
            return
        self._placements[run_id] = placement
        tags = [
            RunTag(schema.GPU_IDS_TAG, record.gpu_ids or ""),
            RunTag(schema.DEVICE_TAG, record.device),
        ]
        if record.worker_nodes:  # a data-parallel trial: every worker's node, in rank order
            tags.append(RunTag(schema.WORKER_NODES_TAG, record.worker_nodes))
        log_batch(self.writer, run_id, tags=tags)

    def _resync(self, run_id: str, record: TrialRecord) -> None:
        """After a restore: send the epochs the journal has and MLflow lacks; skip the rest."""
        if run_id.startswith(PENDING):
            return  # created during an outage: its writes are all still queued
        history = self.writer.read(self.client.get_metric_history, run_id, m.TRAIN_LOSS)
        logged = self._logged.setdefault(run_id, {int(p.step) for p in history})
        self._send_missing(run_id, record, logged)

    def _send_missing(self, run_id: str, record: TrialRecord, logged: set[int]) -> None:
        """Send the record's epochs that are not in `logged` (the epochs MLflow has)."""
        points = self._missing(record, logged)
        if points:
            log_batch(self.writer, run_id, metrics=points)

    @staticmethod
    def _missing(record: TrialRecord, logged: set[int]) -> list:
        """The curve points of the record's epochs not in `logged`, which now holds them."""
        missing = [e for e in sorted(record.epochs) if e not in logged]
        logged.update(missing)
        ts = now_ms()
        return [p for e in missing for p in epoch_metrics(record.epochs[e], ts)]

    def supersede(self, trial_ids: set[str]) -> None:
        """Delete the runs of trials a restore will run again under new ids (see
        StudyRecorder.forget), so each trial has exactly one run."""
        self.wait()
        for trial_id in trial_ids & set(self.run_ids):
            run_id = self.run_ids.pop(trial_id)
            if not run_id.startswith(PENDING):
                self.writer.set_tag(run_id, schema.TRIAL_STATUS_TAG, "superseded_by_restore")
                self.writer.set_terminated(run_id, status="KILLED")
                self.writer.delete_run(run_id)
        save_run_ids(self.run_ids_path, self.parent_run_id, self.run_ids)

    def claim_orphans(self) -> set[str]:
        """After a restore: this study's trial runs that the saved run ids do not name (created
        after the last copy of the ids that reached a remote storage, or just before a crash).
        A trial the recorder knows takes its run back; a run of a trial it does not know is
        superseded, as `supersede` does (Ray runs that trial's slot again). Returns the trial ids
        of the runs it superseded."""
        self.wait()
        known = set(self.run_ids.values())
        query = f"tags.{schema.PARENT_TAG} = '{self.parent_run_id}'"
        runs = self.writer.read(
            lambda: self.client.search_runs([self.experiment_id], query, max_results=50_000)
        )
        orphans = [r for r in runs if r.info.run_id not in known]
        superseded = set()
        for run in orphans:
            run_id, trial_id = run.info.run_id, run.data.tags.get(schema.TRIAL_ID_TAG)
            saved = self.run_ids.get(trial_id)
            if saved is not None and saved.startswith(PENDING):
                continue  # created during an outage: the queue resolves it
            if saved is None and trial_id in self.recorder.trials:
                self.run_ids[trial_id] = run_id
            else:
                self.writer.set_tag(run_id, schema.TRIAL_STATUS_TAG, "superseded_by_restore")
                self.writer.set_terminated(run_id, status="KILLED")
                self.writer.delete_run(run_id)
                superseded.add(trial_id)
        save_run_ids(self.run_ids_path, self.parent_run_id, self.run_ids)
        return superseded

    def reconcile(self) -> None:
        """After a restore: finish the runs of trials that ended before the crash but whose
        MLflow run was not closed, or not even created (the driver died in between, its queued
        writes with it)."""
        self.wait()
        for trial_id, record in self.recorder.trials.items():
            run_id = self.run_ids.get(trial_id)
            if record.status is None or (run_id or "").startswith(PENDING):
                continue
            if run_id is not None:
                run = self.writer.read(self.client.get_run, run_id)
                if run.info.status != "RUNNING":
                    continue
            self._end_trial(trial_id, "FAILED" if record.status == outcomes.ERRORED else "FINISHED")

    def _create_child(self, record: TrialRecord) -> str:

        name = f"trial-{record.number:04d}"
        run_id = self.writer.create_run(
            self.experiment_id,
            name,
            {
                schema.PARENT_TAG: self.parent_run_id,
                schema.ROLE_TAG: schema.TRIAL_ROLE,
                schema.STUDY_TAG: self.spec.name,
                schema.TRIAL_ID_TAG: record.trial_id,
                schema.TRIAL_NUMBER_TAG: str(record.number),
                schema.CONFIG_TAG: json.dumps(record.config)[:MAX_TAG_LENGTH],
                schema.TRIAL_STATUS_TAG: "running",
                schema.WORKERS_TAG: str(self.spec.resources.workers),
            },
        )
        self.writer.log_inputs(run_id, self.inputs)
        return run_id

    def _save_run_ids(self, soon: bool = False) -> None:
        """Write the run ids file; `soon`: only if RUN_IDS_SAVE_EVERY_S have passed (rewriting
        it at every run of a 10,000-trial study wrote gigabytes)."""
        self._ids_unsaved = True
        if soon and time.monotonic() - self._ids_saved_at < RUN_IDS_SAVE_EVERY_S:
            return
        save_run_ids(self.run_ids_path, self.parent_run_id, self.run_ids)
        self._ids_saved_at, self._ids_unsaved = time.monotonic(), False

    def flush(self) -> None:
        """Send every buffered epoch in one batch per run (and the run ids not yet saved)."""
        pending, self._pending = self._pending, {}
        params, self._pending_params = self._pending_params, {}
        for run_id in pending.keys() | params.keys():
            log_batch(
                self.writer, run_id, metrics=pending.get(run_id, []), params=params.get(run_id, [])
            )
        if self._ids_unsaved:
            self._save_run_ids()
        self._last_flush = time.monotonic()

    def _end_trial(self, trial_id: str, run_status: str, traceback: str | None = None) -> None:
        """The trial's last curve points, summary, status and diagnosis in one batch; the
        figure; an errored trial's whole traceback (`ERROR_ARTIFACT`); the run closed."""
        from mlflow.entities import RunTag

        record = self.recorder.trials.get(trial_id)
        if record is None:
            return
        run_id = self._child_run(record)
        self._tag_placement(run_id, record)
        status = record.status or outcomes.ERRORED
        tags = [RunTag(schema.TRIAL_STATUS_TAG, status)]
        if record.error:
            tags.append(RunTag(schema.ERROR_TAG, record.error[:MAX_TAG_LENGTH]))
        shares = [r[m.GPU_SHARE] for r in record.history if m.GPU_SHARE in r]
        headline = f"Trial {record.number}: **{status}**"
        if shares:
            tags.append(RunTag(schema.GPU_SHARE_TAG, f"{shares[-1]:g}"))
            if status == outcomes.OUT_OF_MEMORY:
                headline += f" at GPU share {shares[-1]:g}"
        log_trial_end(
            self.writer,
            run_id,
            record.history,
            self.spec.objective,
            self.spec.diagnostics,
            f"trial {record.number}",
            metrics=self._pending.pop(run_id, []),
            params=self._pending_params.pop(run_id, []),
            tags=tags,
            figures=self._figures,
            headline=headline,
            figure=self.spec.search.num_samples <= CURVE_FIGURES_UP_TO,
        )
        if traceback:
            self.writer.log_text(run_id, redact(traceback), ERROR_ARTIFACT)
        self.writer.set_terminated(run_id, status=run_status)
        # a placeholder may have got its real id during these writes (`_resolved`)
        self.open_runs -= {run_id, self.writer.real_id(run_id)}
        # a retried trial's run is reopened and re-read (`_resync`): nothing to keep per run
        self._logged.pop(run_id, None)
        self._placements.pop(run_id, None)

    def close_open_runs(self, status: str = "KILLED") -> None:
        """Leave no run RUNNING (Ctrl-C, a crash): flush, then end whatever is still open."""
        try:
            self.wait()
        finally:
            self._writes.stop()
            self._figures.close()
            self.flush()
            for run_id in list(self.open_runs):
                self.writer.set_tag(run_id, schema.TRIAL_STATUS_TAG, outcomes.INTERRUPTED)
                self.writer.set_terminated(run_id, status=status)
                self.open_runs.discard(run_id)


def error_traceback(trial) -> str | None:
    """The whole traceback Ray saved for an errored trial (the user's own frames included), or
    None without one."""
    try:
        with open(trial.error_file) as f:
            return f.read()
    except (OSError, TypeError):
        return None


# --------------------------------------------------------------------------- run ids on disk


def load_run_ids(path: Path) -> dict[str, str]:
    if not path.is_file():
        return {}
    return dict(json.loads(path.read_text()).get("trials", {}))


def resolve_saved_run_ids(path: Path, placeholders: dict[str, str]) -> None:
    """Replace placeholder run ids (runs created during an outage) with the real ones on disk."""
    saved = json.loads(path.read_text()) if path.is_file() else {}
    trials = {t: placeholders.get(r, r) for t, r in saved.get("trials", {}).items()}
    save_run_ids(path, saved.get("parent", ""), trials)


def save_run_ids(path: Path, parent_run_id: str, run_ids: dict[str, str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"parent": parent_run_id, "trials": run_ids}
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(payload, indent=1))
    tmp.replace(path)

"""The workers' RQ classes: ImageWorker, which runs jobs in its own process with a short heartbeat,
and TrustedJob, which runs only this service's own task functions.

ImageWorker is a SimpleWorker: it runs every job in the worker's own process instead of forking a child
per job. Forking costs ~15 ms per job against ~2.8 ms (a no-op job, rq 2.12, 2 cores:
bench/job_overhead.py), and keeps nothing warm between jobs; a SimpleWorker keeps imports (and, for the
classifier, the model) loaded. The price: a job that crashes the interpreter takes the worker with it;
RQ then sees the job abandoned and retries it.

While a job runs, a thread keeps the job's heartbeat (JOB_HEARTBEAT_TTL), and workers look for
abandoned jobs every MAINTENANCE_INTERVAL (an idle one wakes every WORKER_TTL - 15 s): with the defaults a
job whose worker was killed is found within about a minute and retried (JOB_RETRIES), where a plain
SimpleWorker would leave it "started" for JOB_TIMEOUT + 60 s and look only every 10 minutes. The three
are settings, so a test (or an impatient operator) can make it seconds.

Per job, a plain SimpleWorker makes about 30 Redis round trips; 10 of them renew the worker's own
key (which lives WORKER_TTL + 60 s) and 3 more re-write an unchanged state or re-check `rq suspend`.
This one renews its key once per job (RQ shortens the key's life as a job starts), at most every
WORKER_BEAT_EVERY seconds otherwise, in one round trip; writes its state only when it changes; checks
for suspension at most every SUSPENSION_CHECK_EVERY seconds; and starts a job, and ends it, in one
transaction each (bench/README.md gives the before and after).
"""

import logging
import signal
import threading
import time

from redis.exceptions import RedisError
from rq import SimpleWorker
from rq.exceptions import StopRequested
from rq.executions import Execution
from rq.job import Job, _job_stack
from rq.utils import now
from rq.worker import WorkerStatus

from imagejobs import batch, callbacks, config, inputs, jobs, metrics, tasks

WORKER_BEAT_EVERY = 5  # seconds; between jobs' own renewals, the worker's key is renewed at most this often
SUSPENSION_CHECK_EVERY = 1  # seconds; `rq suspend` takes effect within this, instead of costing a round trip per job


class ImageWorker(SimpleWorker):
    """A SimpleWorker whose running jobs keep a short heartbeat, so a dead worker's job is noticed soon,
    and which spares the Redis round trips RQ makes per job only to repeat itself."""

    _full_beat_at = None  # time.monotonic() of the last beat that gave the worker's key its full life
    _next_suspension_check = 0.0
    _running = None  # the job being executed now: the beat thread keeps its heartbeat
    _beat_thread = None

    def get_heartbeat_ttl(self, job) -> int:
        return config.settings.job_heartbeat_ttl

    def heartbeat(self, timeout=None, pipeline=None):
        """RQ's heartbeat, skipped when the key got its full life (WORKER_TTL + 60 s) within WORKER_BEAT_EVERY.

        A beat with a timeout (RQ gives the key only JOB_HEARTBEAT_TTL as a job starts) never counts as full,
        so the beat after the job is always made: skipping it would let an idle worker's key expire
        while it blocks for work. A beat of its own is one round trip (HSET and EXPIRE pipelined).
        """
        full = timeout is None
        if full and pipeline is None and self._stop_requested and self.get_state() != WorkerStatus.BUSY:
            raise StopRequested()  # a warm shutdown asked for (request_stop); here between jobs, and each dequeue
        if (
            full
            and pipeline is None
            and self._full_beat_at is not None
            and time.monotonic() - self._full_beat_at < WORKER_BEAT_EVERY
        ):
            return
        if pipeline is None:
            with self.connection.pipeline() as own:
                self._check_registration(own)
                super().heartbeat(timeout, own)
                in_set, born, *_ = own.execute()
            if not (in_set and born):
                self._register_again()
        else:
            super().heartbeat(timeout, pipeline)
        self._full_beat_at = time.monotonic() if full else None

    def _check_registration(self, pipeline) -> None:
        """Add to the pipeline, first, the two looks that tell the worker is still registered: in the
        worker set, and its key whole (job starts and beats write to the key, so a lost one comes back
        bare, without its birth)."""
        pipeline.sismember(self.redis_workers_keys, self.key)
        pipeline.hexists(self.key, "birth")

    def _register_again(self) -> None:
        """The worker's key had expired (Redis was out of reach longer than WORKER_TTL + 60 s, or a failover
        lost it): RQ's maintenance then drops the worker from the worker sets, and it would work on unseen
        by Worker.all, /health and `worker.py --check`. The beat or the job's end just wrote a bare key;
        register in full. Checked in round trips the worker makes anyway (a job's end, an idle beat).

        A Redis error here is logged, not raised: called after a job's success was written, it must not turn
        that job into a failure; the next beat looks again."""
        try:
            self.connection.delete(self.key)
            self.register_birth()
        except RedisError as exc:
            logging.getLogger(__name__).warning("worker %s could not register again (%s)", self.name, exc)
            return
        logging.getLogger(__name__).warning("worker %s registered again: its key had expired", self.name)

    def request_stop(self, signum, frame):
        """RQ's warm shutdown (SIGTERM, or a first SIGINT), safe whenever the signal lands.

        RQ's handler writes to Redis inside the signal handler and, when the worker is not busy, raises
        StopRequested wherever the main thread is without remembering the request: raised inside an except-all
        (a maintenance step, say) it was lost, and the worker went on serving. A worker sent SIGTERM mid-chunk
        in the fault suite, under load, finished its chunk and then served on until it was killed, once. Here
        the request is remembered first and nothing is written; a worker that is not busy still stops at once,
        and the next full heartbeat (each turn of the dequeue loop, and after each job) stops it if that raise
        went astray. A second signal is a cold shutdown, as in RQ."""
        signal.signal(signal.SIGINT, self.request_force_stop)
        signal.signal(signal.SIGTERM, self.request_force_stop)
        self._shutdown_requested_date = now()
        self._stop_requested = True
        if self.get_state() != WorkerStatus.BUSY:
            raise StopRequested()

    def unsubscribe(self):
        """RQ's, without its race. RQ sends UNSUBSCRIBE, then clears its listening thread's flag and joins it
        without a limit: when the thread read the reply first, it went round again, found itself subscribed to
        nothing and waited for a subscription for its whole 60 s sleep, and the stop with it. A SIGTERMed
        worker outlived the fault suite's 60 s wait so, and a test's burst worker took 60 s to end. Here the
        flag is cleared first (the reply then ends the thread) and the join is bounded."""
        if self.pubsub_thread:
            self.pubsub_thread.stop(timeout=0)
            self.pubsub.unsubscribe()
            self.pubsub_thread.join(timeout=1)
            self.pubsub.close()

    def set_state(self, state, pipeline=None):
        """RQ's set_state, but an unchanged state is not written again (it was, once per job)."""
        if pipeline is None and state == self.get_state():
            return
        super().set_state(state, pipeline)

    def check_for_suspension(self, burst: bool):
        """RQ's look for `rq suspend`, at most every SUSPENSION_CHECK_EVERY seconds (it was once per job)."""
        if time.monotonic() < self._next_suspension_check:
            return
        self._next_suspension_check = time.monotonic() + SUSPENSION_CHECK_EVERY
        super().check_for_suspension(burst)

    def prepare_execution(self, job):
        """RQ's two transactions as a job starts, in one round trip: its prepare_execution (the execution record,
        in the started registry, and the BUSY state) and its prepare_job_execution (the current job, the job's
        and the worker's heartbeats, the job's STARTED status and start time, its removal from the intermediate
        queue). Here, where RQ's SimpleWorker.execute_job makes the first, outside perform_job's catch-all: a
        Redis error or a warm shutdown at this point stops the worker as in RQ, and is not taken for the job's
        failure. tests/TestJobControl.py checks what a start writes, so an RQ that changes it is noticed."""
        heartbeat_ttl = self.get_heartbeat_ttl(job)
        with self.connection.pipeline() as pipeline:
            self.execution = Execution.create(job, heartbeat_ttl, pipeline=pipeline, worker_name=self.name)
            self.set_state(WorkerStatus.BUSY, pipeline=pipeline)
            self.set_current_job_id(job.id, pipeline=pipeline)
            self.set_current_job_working_time(0, pipeline=pipeline)
            self.heartbeat(heartbeat_ttl, pipeline=pipeline)
            job.heartbeat(now(), heartbeat_ttl, pipeline=pipeline)
            job.prepare_for_execution(self.name, pipeline=pipeline)
            if len(self.queues) == 1:  # RQ's rule: with one queue, the job was moved through its intermediate queue
                pipeline.lrem(self.queues[0].intermediate_queue_key, 1, job.id)
            pipeline.execute()
        return self.execution

    def prepare_job_execution(self, job, remove_from_intermediate_queue=False):
        """What RQ writes here, prepare_execution has written already."""
        self.procline(f"Processing {job.func_name} from {job.origin} since {time.time()}")

    def handle_execution_ended(self, job, queue, heartbeat_ttl):
        """The job's end time. RQ also beats the job's key here, a round trip of its own, right before the
        success or failure handling writes the job's end anyway: that beat is left out."""
        job.ended_at = now()

    def handle_job_success(self, job, queue, started_job_registry):
        """RQ's success handling in one transaction and one round trip. RQ first WATCHes the job's
        dependents and reads them (two round trips; no job of this service has dependents), and after it
        the worker writes its idle state and renews its key (two more): all of it goes in this pipeline."""
        with self.connection.pipeline() as pipeline:
            self._check_registration(pipeline)
            self.increment_successful_job_count(pipeline=pipeline)
            self.increment_total_working_time(job.ended_at - job.started_at, pipeline)
            result_ttl = job.get_result_ttl(self.default_result_ttl)
            if result_ttl != 0:
                job._handle_success(
                    result_ttl,
                    pipeline=pipeline,
                    worker_name=self.name,
                    execution_id=self.execution.id if self.execution else None,
                    execution_started_at=self.execution.created_at if self.execution else None,
                    execution_ended_at=job.ended_at,
                )
            job.cleanup(result_ttl, pipeline=pipeline, remove_from_queue=False)
            self.cleanup_execution(job, pipeline=pipeline)
            self.set_state(WorkerStatus.IDLE, pipeline=pipeline)
            self.heartbeat(pipeline=pipeline)
            callbacks.schedule(pipeline, job, config.settings)  # the job's callback, if it has one, is due
            in_set, born, *_ = pipeline.execute()
        if not (in_set and born):
            self._register_again()

    def run_maintenance_tasks(self):
        """RQ's maintenance (abandoned jobs, registries), then the sweep of inputs past INPUT_TTL; one worker
        at a time sweeps (inputs.sweep takes a lock), and a failed sweep never stops the worker."""
        super().run_maintenance_tasks()
        try:
            inputs.sweep(self.connection, config.settings)
        except Exception:
            logging.getLogger(__name__).exception("sweeping old inputs failed; the next maintenance tries again")

    def execute_job(self, job, queue):
        if self._beat_thread is None:
            self._beat_thread = threading.Thread(target=self._beat, name="heartbeat", daemon=True)
            self._beat_thread.start()
        self._running = job
        try:
            super().execute_job(job, queue)
        finally:
            self._running = None

    def _beat(self) -> None:
        """One thread for the worker's life (a thread per job cost ~0.1 ms a job): every third of
        JOB_HEARTBEAT_TTL it renews the heartbeat of the job running then, and adds what this process counted
        (metrics.WORK) to Redis. RQ's heartbeat only updates what still exists (XX), so a beat that races
        with the job's end leaves nothing behind."""
        while True:
            time.sleep(config.settings.job_heartbeat_ttl / 3)
            job = self._running
            try:
                metrics.WORK.flush(self.connection)
                if job is not None:
                    self.maintain_heartbeats(job)
            except Exception as exc:  # the job may just have ended, or Redis blinked: the next beat tries again
                logging.getLogger(__name__).debug("heartbeat skipped: %s", exc)


def _name(function) -> str:
    return f"{function.__module__}.{function.__qualname__}"


# The functions a job may name, by the dotted path RQ stores in Redis.
TASKS = {_name(function): function for function in (tasks.run_single, tasks.run_whole, batch.run_chunk, batch.finish)}
FAILURE_CALLBACKS = {_name(function): function for function in (tasks.on_failure, batch.on_chunk_failure)}
# The paths of the release before the imagejobs package, for jobs it queued: kept for one release, so
# an upgrade need not wait for the queues to drain (docs/operations.md, "Upgrading"). Its one failure callback
# served both kinds of job.
LEGACY_TASKS = {
    "tasks.run_single": tasks.run_single,
    "tasks.run_whole": tasks.run_whole,
    "tasks.run_chunk": batch.run_chunk,
    "tasks.finish_batch": batch.finish,
}
LEGACY_FAILURE_CALLBACK = "tasks.on_failure"


class UntrustedJob(Exception):
    pass


class TrustedJob(Job):
    """A job that can run only this service's own task functions and failure callbacks.

    JSON jobs already keep a pickle from running code in a worker; but a JSON job still names its
    function by import path, so whoever can write to Redis could name `os.system`. The workers use
    this class, so such a job fails instead of running; and the functions come from the tables above,
    never from an import of whatever the job names.
    """

    @property
    def func(self):
        function = TASKS.get(self.func_name) or LEGACY_TASKS.get(self.func_name)
        if function is None:
            raise UntrustedJob(f"The job names {self.func_name!r}, which is not a task of this service; refused.")
        return function

    @property
    def failure_callback(self):
        if self._failure_callback_name == LEGACY_FAILURE_CALLBACK:
            return batch.on_chunk_failure if self.meta.get("kind") == jobs.CHUNK else tasks.on_failure
        return FAILURE_CALLBACKS.get(self._failure_callback_name)

    @property
    def success_callback(self):
        return None

    def perform(self):
        """RQ's perform without the PERSIST of the job's key it starts with (for jobs enqueued with a ttl,
        which this service never gives): a round trip fewer a job."""
        _job_stack.push(self)
        try:
            self._result = self._execute()
        finally:
            _job_stack.pop()
        return self._result

    @property
    def stopped_callback(self):
        return None

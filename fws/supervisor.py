"""``fws_server --workers N``: a plain process that runs N fws worker processes.

The supervisor binds the listening socket once and every worker inherits it
(``pass_fds``): the port is open from the supervisor's bind until it exits,
through worker crashes and reloads, and port 0 gives every worker the same
real port. (Measured against one SO_REUSEPORT socket per worker, see
docs/operations/workers.rst: the shared socket balanced as well or better and,
unlike SO_REUSEPORT, loses no queued connection when one worker closes.)

Workers are fresh interpreters (``python -P -m fws.worker`` with the same
arguments), so a reload really loads new code, filter modules and TLS
certificates, and each worker monkey-patches gevent itself, first. This
module imports no gevent and no application code: it only forks, waits,
forwards signals and restarts, as gunicorn's arbiter and uvicorn's
multiprocess supervisor do.

Signals: SIGTERM/SIGINT drain every worker (each closes its clients with
1001 within ``--close-timeout``), a SIGINT after that kills them at once; SIGHUP
replaces the workers one at a time; a worker that dies is restarted with
exponential backoff.
"""

from __future__ import annotations

import logging
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from .metrics import MULTIPROC_ENV

__all__ = [
    "LISTEN_FD_ENV",
    "READY_FD_ENV",
    "SUPERVISOR_PID_ENV",
    "Supervisor",
    "bind_listener",
    "resolve_workers",
]

log = logging.getLogger("fws.supervisor")

LISTEN_FD_ENV = "FWS_WORKER_LISTEN_FD"
"""The inherited socket's descriptor, in its environment (bound; the first worker listens)."""
READY_FD_ENV = "FWS_WORKER_READY_FD"
"""A pipe the worker writes one byte to once it accepts clients."""
SUPERVISOR_PID_ENV = "FWS_SUPERVISOR_PID"
"""The supervisor's pid: a worker whose parent is another process is an orphan."""


def resolve_workers(value: int | str) -> int:
    """The number of workers for ``--workers``: a positive number, or ``auto`` (one per CPU)."""
    if value == "auto":
        try:
            return max(len(os.sched_getaffinity(0)), 1)
        except AttributeError:  # not Linux
            return os.cpu_count() or 1
    return int(value)


def bind_listener(host: str, port: int) -> socket.socket:
    """A socket bound to host:port (port 0: a free one), not yet listening.

    The supervisor binds, so that a busy port is reported at once and every
    worker gets the same real port; the first worker to have imported fws
    calls ``listen()`` on it, before it loads filters or opens the storage
    (gevent's server cannot start on a socket that does not listen yet), so
    connections may queue a moment before a worker can serve them: a load
    balancer should check ``/ready``. Once listening, the socket stays so
    until the supervisor exits, whatever happens to the workers. Raises
    ``OSError``.
    """
    family, kind, proto, _, address = socket.getaddrinfo(
        host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except BaseException:
        sock.close()
        raise
    return sock


@dataclass
class _Worker:
    """One worker process and what the supervisor knows about it."""

    slot: int
    process: subprocess.Popen[bytes]
    ready_fd: int | None
    started: float = field(default_factory=time.monotonic)
    ready: bool = False
    retiring: bool = False  # told to drain: a reload replaced it, or shutdown
    drain_at: float | None = None  # when to SIGTERM it, after it stopped accepting
    kill_at: float | None = None  # when to SIGKILL it, if a reload's drain hangs

    @property
    def pid(self) -> int:
        return self.process.pid


class Supervisor:
    """Keeps ``workers`` worker processes running on one listening socket.

    ``command`` starts one worker (it gets the socket's descriptor and a
    readiness pipe in its environment); ``tls`` only says which scheme to
    log (the workers load the certificates). ``shutdown_timeout`` bounds the
    wait for draining workers before they are killed, at a shutdown and for
    each worker a reload replaces (a wedged one would stall the reload). A
    worker that dies is restarted after ``backoff_start`` seconds, doubling
    per death up to ``backoff_max``; the delay is reset once a worker has lived
    ``stable_after`` seconds. When every worker has failed ``give_up_after``
    times in a row without becoming ready, the supervisor stops (exit 1)
    rather than retry forever with nothing serving. A worker replaced by a
    reload stops accepting, then drains ``drain_grace`` seconds later.
    """

    def __init__(
        self,
        command: Sequence[str],
        workers: int,
        listener: socket.socket,
        *,
        env: Mapping[str, str] | None = None,
        shutdown_timeout: float = 10.0,
        ready_timeout: float = 30.0,
        backoff_start: float = 0.1,
        backoff_max: float = 30.0,
        stable_after: float = 10.0,
        give_up_after: int = 10,
        drain_grace: float = 1.0,
        tls: bool = False,
    ) -> None:
        if workers < 1:
            raise ValueError("workers must be at least 1")
        self.command = list(command)
        self.count = workers
        self.listener = listener
        self.env = dict(os.environ if env is None else env)
        self.shutdown_timeout = shutdown_timeout
        self.ready_timeout = ready_timeout
        self.backoff_start = backoff_start
        self.backoff_max = backoff_max
        self.stable_after = stable_after
        self.give_up_after = give_up_after
        self.drain_grace = drain_grace
        self.tls = tls
        self.workers: dict[int, _Worker] = {}  # by pid
        self._failures = [0] * workers  # consecutive deaths per slot
        self._restart_at: dict[int, float] = {}  # slot -> when to start it again
        self._signals: list[int] = []
        self._reload: list[int] = []  # slots still to replace in the current reload
        self._replacing: tuple[int, _Worker] | None = None  # (old pid, new worker)
        self._reloading = False
        self._metrics_dir: str | None = None

    # -- the loop -------------------------------------------------------------------

    def run(self) -> int:
        """Start the workers, supervise until told to stop; return the exit status."""
        wake_read, wake_write = os.pipe()
        os.set_blocking(wake_read, False)
        os.set_blocking(wake_write, False)
        previous_wakeup = signal.set_wakeup_fd(wake_write)
        handled = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGCHLD)
        previous = {signum: signal.signal(signum, self._on_signal) for signum in handled}
        self._prepare_metrics_dir()
        try:
            status = self._start_all()
            if status is None:
                status = self._loop(wake_read)
            return status
        finally:
            self._kill_all()
            for signum, handler in previous.items():
                signal.signal(signum, handler)
            signal.set_wakeup_fd(previous_wakeup)
            os.close(wake_read)
            os.close(wake_write)
            self._remove_metrics_dir()

    def _on_signal(self, signum: int, _frame: object) -> None:
        self._signals.append(signum)

    def _start_all(self) -> int | None:
        """Start every worker and wait until each is ready; an exit status if one fails."""
        for slot in range(self.count):
            self._spawn(slot)
        deadline = time.monotonic() + self.ready_timeout
        while not all(w.ready for w in self.workers.values()):
            stop = [s for s in self._signals if s in (signal.SIGINT, signal.SIGTERM)]
            if stop:
                log.info("%s while starting: draining the workers", signal.Signals(stop[0]).name)
                self._signals.remove(stop[0])
                return self._shutdown()
            for worker in list(self.workers.values()):
                code = worker.process.poll()
                if code is not None:
                    self._forget(worker)
                    log.error(
                        "worker %d (pid %d) %s before it was ready; stopping",
                        worker.slot, worker.pid, describe_status(code),
                    )  # fmt: skip
                    self._shutdown()
                    return 2 if code == 2 else 1
            if time.monotonic() > deadline:
                log.error("workers not ready after %.0f s; stopping", self.ready_timeout)
                self._shutdown()
                return 1
            self._wait_ready(0.05)
        self._signals = [s for s in self._signals if s != signal.SIGCHLD]
        host, port = self.listener.getsockname()[:2]
        host = f"[{host}]" if ":" in host else host
        scheme = "wss" if self.tls else "ws"
        pids = ", ".join(str(w.pid) for w in self.workers.values())
        log.info(
            "fws listening on %s://%s:%d with %d workers (pids %s)",
            scheme, host, port, self.count, pids,
        )  # fmt: skip
        return None

    def _loop(self, wake_read: int) -> int:
        while True:
            signals, self._signals = self._signals, []
            for position, signum in enumerate(signals):
                if signum in (signal.SIGINT, signal.SIGTERM):
                    log.info("%s: draining the workers", signal.Signals(signum).name)
                    # A SIGINT already received after it means "now": _shutdown sees it.
                    self._signals = signals[position + 1 :] + self._signals
                    return self._shutdown()
                if signum == signal.SIGHUP:
                    self._begin_reload()
            self._reap()
            if self._gave_up():
                log.error(
                    "every worker failed to start %d times in a row; stopping",
                    self.give_up_after,
                )
                return 1
            self._restart_due()
            self._drain_due()
            self._advance_reload()
            self._sleep(wake_read, self._next_timeout())

    def _sleep(self, wake_read: int, timeout: float) -> None:
        readers = [wake_read, *self._pending_ready_fds()]
        try:
            readable, _, _ = select.select(readers, [], [], timeout)
        except InterruptedError:  # pragma: no cover - PEP 475 retries select
            return
        if wake_read in readable:
            try:
                while os.read(wake_read, 512):
                    pass
            except BlockingIOError:
                pass
        self._check_ready(readable)

    def _next_timeout(self) -> float:
        now = time.monotonic()
        waits = [at - now for at in self._restart_at.values()]
        waits += [w.drain_at - now for w in self.workers.values() if w.drain_at is not None]
        waits += [w.kill_at - now for w in self.workers.values() if w.kill_at is not None]
        return max(min([1.0, *waits]), 0.01)

    # -- workers --------------------------------------------------------------------

    def _spawn(self, slot: int, *, retry: bool = True) -> _Worker | None:
        """Start a worker for ``slot``; if it cannot even be forked, retry later (or not)."""
        ready_read, ready_write = os.pipe()
        env = dict(self.env)
        env[READY_FD_ENV] = str(ready_write)
        env[SUPERVISOR_PID_ENV] = str(os.getpid())
        pass_fds = [ready_write]
        env[LISTEN_FD_ENV] = str(self.listener.fileno())
        pass_fds.append(self.listener.fileno())
        if self._metrics_dir is not None:
            env[MULTIPROC_ENV] = self._metrics_dir
        try:
            process = subprocess.Popen(
                self.command,
                env=env,
                pass_fds=pass_fds,
                stdin=subprocess.DEVNULL,
                # Its own process group: a terminal's Ctrl-C reaches only the
                # supervisor, which then tells each worker once.
                process_group=0,
            )
        except OSError as exc:
            os.close(ready_read)
            os.close(ready_write)
            log.error("cannot start worker %d: %s", slot, exc)
            if retry:
                self._schedule_restart(slot)
            return None
        os.close(ready_write)
        worker = _Worker(slot, process, ready_read)
        self.workers[process.pid] = worker
        log.info("worker %d started (pid %d)", slot, process.pid)
        return worker

    def _pending_ready_fds(self) -> list[int]:
        return [w.ready_fd for w in self.workers.values() if w.ready_fd is not None]

    def _wait_ready(self, timeout: float) -> None:
        fds = self._pending_ready_fds()
        if not fds:
            time.sleep(timeout)
            return
        readable, _, _ = select.select(fds, [], [], timeout)
        self._check_ready(readable)

    def _check_ready(self, readable: Sequence[int]) -> None:
        for worker in self.workers.values():
            if worker.ready_fd is None or worker.ready_fd not in readable:
                continue
            if os.read(worker.ready_fd, 1):
                worker.ready = True
                log.info("worker %d (pid %d) is ready", worker.slot, worker.pid)
            # Ready or dead (end of file): either way the pipe has said all.
            os.close(worker.ready_fd)
            worker.ready_fd = None

    def _forget(self, worker: _Worker) -> None:
        if worker.ready_fd is not None:
            os.close(worker.ready_fd)
            worker.ready_fd = None
        self.workers.pop(worker.pid, None)
        self._mark_dead(worker.pid)

    def _reap(self) -> None:
        for worker in list(self.workers.values()):
            code = worker.process.poll()
            if code is None:
                continue
            self._forget(worker)
            if worker.retiring:
                log.info("worker %d (pid %d) drained and %s", worker.slot, worker.pid,
                         describe_status(code))  # fmt: skip
                continue
            if self._replacing is not None and self._replacing[1] is worker:
                log.error(
                    "reload: new worker %d (pid %d) %s before it was ready; "
                    "keeping the old workers",
                    worker.slot, worker.pid, describe_status(code),
                )  # fmt: skip
                if self._replacing[0] not in self.workers:
                    # The old one died meanwhile too: the slot is empty.
                    self._schedule_restart(worker.slot)
                self._replacing = None
                self._reload = []
                self._reloading = False
                continue
            lived = time.monotonic() - worker.started
            if self._replacing is not None and self._replacing[0] == worker.pid:
                # The worker being replaced died on its own: its replacement,
                # starting now, takes the slot.
                log.warning("worker %d (pid %d) %s during the reload",
                            worker.slot, worker.pid, describe_status(code))  # fmt: skip
                continue
            log.warning(
                "worker %d (pid %d) %s after %.1f s; restarting it",
                worker.slot, worker.pid, describe_status(code), lived,
            )  # fmt: skip
            if worker.ready and lived >= self.stable_after:
                self._failures[worker.slot] = 0
            self._schedule_restart(worker.slot)

    def _schedule_restart(self, slot: int) -> None:
        """Start ``slot`` again after the backoff: 0.1 s, doubling per failure, capped."""
        delay = min(self.backoff_start * 2 ** self._failures[slot], self.backoff_max)
        self._failures[slot] += 1
        self._restart_at[slot] = time.monotonic() + delay
        log.info("worker %d restarts in %.1f s", slot, delay)

    def _restart_due(self) -> None:
        now = time.monotonic()
        for slot, at in list(self._restart_at.items()):
            if at <= now:
                del self._restart_at[slot]
                self._spawn(slot)

    def _drain_due(self) -> None:
        now = time.monotonic()
        for worker in self.workers.values():
            if worker.drain_at is not None and worker.drain_at <= now:
                worker.drain_at = None
                _signal(worker.process, signal.SIGTERM)
                # As gunicorn's graceful_timeout: a worker that does not stop
                # would hold up the rest of the reload forever.
                worker.kill_at = now + self.shutdown_timeout
            elif worker.kill_at is not None and worker.kill_at <= now:
                worker.kill_at = None
                log.warning(
                    "reload: worker %d (pid %d) did not stop within %.0f s; killing it",
                    worker.slot, worker.pid, self.shutdown_timeout,
                )  # fmt: skip
                _signal(worker.process, signal.SIGKILL)

    def _gave_up(self) -> bool:
        if self.workers and any(w.ready for w in self.workers.values()):
            return False
        return all(f >= self.give_up_after for f in self._failures)

    # -- reload (SIGHUP) ---------------------------------------------------------------

    def _begin_reload(self) -> None:
        if self._reloading:
            log.warning("SIGHUP: a reload is already in progress")
            return
        log.info("SIGHUP: replacing the workers one at a time")
        self._reload = sorted({w.slot for w in self.workers.values() if not w.retiring})
        self._reloading = True

    def _advance_reload(self) -> None:
        if self._replacing is not None:
            old_pid, new = self._replacing
            if new.ready:
                old = self.workers.get(old_pid)
                if old is not None:
                    # Stop accepting first: the handshakes it has taken complete
                    # (instead of getting 503), new clients go to the others;
                    # then drain it like at a shutdown.
                    old.retiring = True
                    _signal(old.process, signal.SIGUSR1)
                    old.drain_at = time.monotonic() + self.drain_grace
                    log.info("reload: worker %d (pid %d) replaced by pid %d; draining it",
                             new.slot, old_pid, new.pid)  # fmt: skip
                self._replacing = None
            elif time.monotonic() - new.started > self.ready_timeout:
                log.error(
                    "reload: new worker %d (pid %d) not ready after %.0f s; keeping the old ones",
                    new.slot, new.pid, self.ready_timeout,
                )  # fmt: skip
                new.retiring = True
                new.process.kill()
                self._replacing = None
                self._reload = []
                self._reloading = False
            return
        # One at a time: the next only when the drained one has gone.
        if any(w.retiring for w in self.workers.values()):
            return
        while self._reload:
            slot = self._reload.pop(0)
            old = next(
                (w for w in self.workers.values() if w.slot == slot and not w.retiring), None
            )
            if old is None:
                continue  # died meanwhile; the restart loads the new code anyway
            replacement = self._spawn(slot, retry=False)
            if replacement is None:
                log.error("reload: keeping the old workers")
                self._reload = []
                self._reloading = False
            else:
                self._replacing = (old.pid, replacement)
            return
        if self._reloading:
            self._reloading = False
            pids = ", ".join(str(w.pid) for w in self.workers.values())
            log.info("reload done: workers are pids %s", pids)

    # -- shutdown -------------------------------------------------------------------

    def _shutdown(self) -> int:
        """SIGTERM every worker, wait up to ``shutdown_timeout``, kill the rest.

        A SIGINT while waiting (Ctrl-C twice) kills the workers at once, exit
        status 130; a repeated SIGTERM changes nothing (see
        ``fws.serving.serve_until_signalled``).
        """
        self._restart_at.clear()
        for worker in self.workers.values():
            worker.retiring = True
            worker.drain_at = worker.kill_at = None
            _signal(worker.process, signal.SIGTERM)
        deadline = time.monotonic() + self.shutdown_timeout
        while self.workers:
            signals, self._signals = self._signals, []
            if signal.SIGINT in signals:
                log.warning("SIGINT while draining: killing the workers now")
                self._kill_all()
                return 128 + signal.SIGINT
            self._reap()
            if time.monotonic() > deadline:
                log.warning("%d workers did not stop within %.0f s; killing them",
                            len(self.workers), self.shutdown_timeout)  # fmt: skip
                self._kill_all()
                return 1
            time.sleep(0.05)
        log.info("fws stopped")
        return 0

    def _kill_all(self) -> None:
        for worker in list(self.workers.values()):
            _signal(worker.process, signal.SIGKILL)
            worker.process.wait()
            self._forget(worker)

    # -- metrics (prometheus_client multi-process mode) ---------------------------------

    def _prepare_metrics_dir(self) -> None:
        """Give the workers a fresh PROMETHEUS_MULTIPROC_DIR unless the operator set one."""
        if self.env.get(MULTIPROC_ENV):
            return
        self._metrics_dir = tempfile.mkdtemp(prefix="fws-metrics-")

    def _remove_metrics_dir(self) -> None:
        if self._metrics_dir is not None:
            shutil.rmtree(self._metrics_dir, ignore_errors=True)
            self._metrics_dir = None

    def _mark_dead(self, pid: int) -> None:
        directory = self._metrics_dir or self.env.get(MULTIPROC_ENV)
        if not directory:
            return
        from prometheus_client import multiprocess

        try:
            multiprocess.mark_process_dead(pid, directory)
        except OSError as exc:
            log.debug("cannot mark worker %d dead for metrics: %s", pid, exc)


def _signal(process: subprocess.Popen[bytes], signum: int) -> None:
    if process.poll() is None:
        try:
            process.send_signal(signum)
        except ProcessLookupError:
            pass


def describe_status(code: int) -> str:
    """``exited with status 3`` or ``was killed by SIGKILL``, from a Popen return code."""
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"was killed by {name}"
    return f"exited with status {code}"


def worker_command() -> list[str]:
    """How to start one worker: this Python running ``fws.worker`` of this fws."""
    # -P: ``-m`` would put the current directory first on sys.path, where a
    # ./json.py would shadow the standard library; fws appends it instead
    # (``-f ./x.py``, see fws.modules).
    root = _root_unseen_by_workers()
    if root is None:
        return [sys.executable, "-P", "-m", "fws.worker"]
    # This fws runs from a directory that only ``python -m`` put on sys.path
    # (a checkout, not installed): a worker is told where it is, first, as
    # the supervisor had it, or it would load another fws or none at all.
    bootstrap = (
        f"import sys, runpy; sys.path.insert(0, {root!r}); "
        "runpy.run_module('fws.worker', run_name='__main__', alter_sys=True)"
    )
    return [sys.executable, "-P", "-c", bootstrap]


def _root_unseen_by_workers() -> str | None:
    """The directory holding this ``fws`` package if ``python -P`` would not import it."""
    import importlib.machinery

    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    cwd = os.getcwd()
    # What a -P interpreter searches: sys.path without the current directory
    # (``""`` or its absolute path, which ``-m`` put first).
    path = [p for p in sys.path if p and os.path.abspath(p) != cwd]
    found = None
    for finder in sys.meta_path:  # in import order: an editable install's finder too
        if finder is importlib.machinery.PathFinder:
            found = finder.find_spec("fws", path)
        elif (find_spec := getattr(finder, "find_spec", None)) is not None:
            found = find_spec("fws", None)
        if found is not None:
            break
    origin = found.origin if found is not None else None
    if origin is not None and os.path.dirname(os.path.dirname(os.path.abspath(origin))) == here:
        return None
    return here

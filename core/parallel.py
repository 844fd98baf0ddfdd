"""Run row bands (:mod:`core.tiles.rowbands`) in this process, in worker processes or on a Dask
cluster, and hand their results back in band order with a bounded number in flight.

* :class:`InProcess`: the bands run one after the other in the caller's thread with the
  caller's model (reading overlaps the model's work through :func:`.tiles.loop.prefetched`).
* :class:`ProcessPool`: ``workers`` Python processes. Inside QGIS (and ``qgis_process``)
  ``sys.executable`` is the QGIS binary, not Python, so the workers are started with
  :func:`python_executable` (a real Python of the same version) and this process's
  ``sys.path``. Each worker limits its model to ``cores // workers`` threads.
* :class:`DaskCluster`: the same band tasks on a Dask distributed scheduler
  (``distributed.Client(address).submit``); workers must import ``glassbox`` and reach the raster
  and the model by the same path (a shared file system, or a GDAL URL such as ``/vsicurl/``).

:func:`ordered_results` keeps at most ``in_flight`` bands submitted and yields results in
order; it checks ``is_cancelled`` while it waits. ``close(abort=True)`` stops running workers.
``distributed`` is imported only when a scheduler address is given.
"""

from __future__ import annotations

import os
import pickle
import queue
import re
import shutil
import subprocess
import sys
import threading
import time
from collections import deque
from concurrent.futures import Future
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from .errors import Cancelled, GlassboxError
from .tiles.rowbands import BandResult, BandRunner, BandSpec, RowBand, run_band

#: seconds to wait for a Dask scheduler to answer before giving up
DASK_CONNECT_TIMEOUT = 5.0
#: environment variable naming the Python interpreter of worker processes (overrides the search)
PYTHON_ENV = "GLASSBOX_PYTHON"
_POLL = 0.2  # seconds between cancel checks while waiting for a band


class ParallelError(GlassboxError):
    """Worker processes or a Dask cluster cannot run the job as asked (bad WORKERS value, no
    Python for the workers, a worker died, the scheduler cannot be reached)."""


def cpu_count() -> int:
    """CPU cores this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def check_workers(workers: int) -> int:
    if workers is None or int(workers) != workers or workers < 0:
        raise ParallelError(f"the number of worker processes (WORKERS) must be 0 (all cores) or more, got {workers}")
    return int(workers)


# -- a Python for worker processes ----------------------------------------------------------------
_python: str | None = None


def python_executable() -> str:
    """A Python interpreter of this Python's version to start worker processes with:
    ``$GLASSBOX_PYTHON``, ``sys.executable`` when it is Python (not inside QGIS), else
    ``python3.X`` / ``python3`` / ``python.exe`` beside this Python's prefixes or on PATH."""
    global _python
    if _python is not None:
        return _python
    version = f"{sys.version_info[0]}.{sys.version_info[1]}"
    candidates: list[str] = []
    if os.environ.get(PYTHON_ENV):
        candidates.append(os.environ[PYTHON_ENV])
    for exe in (sys.executable, getattr(sys, "_base_executable", "")):
        if exe and re.fullmatch(r"python[\d.]*(w)?(\.exe)?", Path(exe).name, re.IGNORECASE):
            candidates.append(exe)
    for prefix in dict.fromkeys([sys.exec_prefix, sys.base_exec_prefix, sys.prefix]):
        candidates += [os.path.join(prefix, "bin", f"python{version}"), os.path.join(prefix, "bin", "python3"),
                       os.path.join(prefix, "python.exe"), os.path.join(prefix, "python3.exe")]
    candidates += [shutil.which(f"python{version}") or "", shutil.which("python3") or "", shutil.which("python") or ""]
    tried, same_version = [], []
    for exe in dict.fromkeys(c for c in candidates if c):
        if not (os.path.isfile(exe) and os.access(exe, os.X_OK)):
            continue
        tried.append(exe)
        try:
            done = subprocess.run([exe, "-c", "import sys; print('%d.%d' % sys.version_info[:2]); print(sys.base_prefix)"],
                                  capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.SubprocessError):
            continue
        answer = done.stdout.split("\n")
        if done.returncode == 0 and answer[0].strip() == version:
            # inside QGIS, sys.executable is a guess from PATH (e.g. a pyenv shim): an interpreter of
            # this Python's own installation comes first, another of the same version only if none is
            if len(answer) > 1 and os.path.realpath(answer[1].strip()) == os.path.realpath(sys.base_prefix):
                _python = exe
                return exe
            same_version.append(exe)
    if same_version:
        _python = same_version[0]
        return _python
    raise ParallelError(
        f"no Python {version} interpreter found to start worker processes (tried: {', '.join(tried) or 'none'}); "
        f"set the environment variable {PYTHON_ENV} to one, or use WORKERS=1")


# -- backends -------------------------------------------------------------------------------------
class InProcess:
    """Bands run one at a time in this thread, with ``model``, when their result is asked for
    (so progress and cancel go through the caller's thread as before); ``is_cancelled`` is
    checked and ``on_batch`` (band, tiles of it done) called after every batch."""

    name = "in this process"
    capacity = 1

    def __init__(self, spec: BandSpec, model: Any, is_cancelled: Callable[[], bool] | None = None,
                 on_batch: Callable[[RowBand, int], None] | None = None):
        self.spec, self.model, self.is_cancelled, self.on_batch = spec, model, is_cancelled, on_batch
        self.runner: BandRunner | None = None

    def _run(self, band: RowBand) -> BandResult:
        if self.runner is None:
            self.runner = BandRunner(self.spec, self.model)
        return self.runner.run(band, self.is_cancelled, self.on_batch)

    def submit(self, band: RowBand) -> "_Deferred":
        return _Deferred(self._run, band)

    def close(self, abort: bool = False) -> None:
        if self.runner is not None:
            self.runner.close()
            self.runner = None


class _Deferred:
    """A future whose work runs in the thread that first asks for its result."""

    def __init__(self, function: Callable[[RowBand], BandResult], band: RowBand):
        self.function, self.band = function, band

    def result(self, timeout: float | None = None) -> BandResult:
        return self.function(self.band)

    def cancel(self) -> bool:
        return True


class _Worker:
    """One worker process: ``python -c <start>`` speaking pickled messages over its stdin and
    stdout (its own prints and C libraries' output go to its stderr, whose last lines are kept
    for error messages)."""

    def __init__(self, python: str, env: dict[str, str]):
        # import_module, not a from-import: the plugin folder may have any name once installed
        # (e.g. glassbox-main from a GitHub zip), which need not be a Python identifier
        code = f"import importlib; importlib.import_module({__name__!r}).worker_main()"
        self.process = subprocess.Popen([python, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, env=env,
                                        creationflags=getattr(subprocess, "CREATE_NO_WINDOW", 0))  # Windows
        self.tail: deque[str] = deque(maxlen=30)
        self._stderr = threading.Thread(target=self._read_stderr, daemon=True, name="glassbox-worker-stderr")
        self._stderr.start()

    def _read_stderr(self) -> None:
        for line in iter(self.process.stderr.readline, b""):
            self.tail.append(line.decode("utf-8", "replace").rstrip())

    def call(self, message: tuple) -> Any:
        """Send ``message``; the worker's answer (an exception it raised is raised here)."""
        try:
            pickle.dump(message, self.process.stdin, protocol=pickle.HIGHEST_PROTOCOL)
            self.process.stdin.flush()
            ok, value = pickle.load(self.process.stdout)
        except (EOFError, OSError, pickle.UnpicklingError) as exc:
            self.process.wait(timeout=10)
            self._stderr.join(timeout=5)
            said = "\n".join(line for line in self.tail if line.strip())[-3000:]
            code = self.process.returncode
            killed = code is not None and code < 0  # a signal, e.g. SIGKILL from the kernel's out-of-memory killer
            raise ParallelError(f"a worker process stopped (exit code {code}{'; out of memory?' if killed else ''}): "
                                f"{said or exc}. " + ("Try fewer WORKERS or a smaller BATCH_SIZE; " if killed else
                                                      "WORKERS=1 classifies in QGIS's own process; ")
                                + "nothing was written") from exc
        if not ok:
            raise value
        return value

    def stop(self, kill: bool) -> None:
        if kill and self.process.poll() is None:
            self.process.kill()
        for stream in (self.process.stdin, self.process.stdout):
            try:
                stream.close()
            except OSError:
                pass
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self._stderr.join(timeout=5)  # it reads the process's last lines to the end of the pipe
        try:
            self.process.stderr.close()
        except OSError:
            pass


def worker_main() -> None:
    """The loop of a worker process (see :class:`_Worker`): ``("spec", BandSpec)`` sets the job,
    ``("band", RowBand)`` computes a band and answers ``(True, BandResult)`` or
    ``(False, exception)``."""
    answers = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # anything else written to stdout goes to stderr
    sys.stdout = sys.stderr
    questions = sys.stdin.buffer
    spec = None
    while True:
        try:
            kind, payload = pickle.load(questions)
        except EOFError:
            return
        if kind == "spec":
            spec, answer = payload, (True, None)
        else:
            try:
                answer = (True, run_band(spec, payload))
            except BaseException as exc:  # handed to the client
                answer = (False, _portable(exc))
        pickle.dump(answer, answers, protocol=pickle.HIGHEST_PROTOCOL)
        answers.flush()


def _portable(exc: BaseException) -> BaseException:
    """``exc`` if it survives pickling, else a :class:`ParallelError` with its traceback."""
    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:
        import traceback

        text = "".join(traceback.format_exception(exc))
        return ParallelError(f"a worker process failed: {text[-3000:]}")


class ProcessPool:
    """``workers`` Python processes (:func:`python_executable`, started with this process's
    ``sys.path`` as ``PYTHONPATH`` and ``spec.threads`` threads for numeric libraries), each
    computing whole bands. Not :mod:`multiprocessing`: its spawn method re-runs the caller's main
    script in every worker and needs ``sys.executable`` to be Python."""

    def __init__(self, spec: BandSpec, workers: int):
        self.spec = spec
        self.capacity = workers
        threads = str(spec.threads or 1)
        self.name = f"in {workers} worker processes ({threads} model thread(s) each)"
        python = python_executable()
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p),
                   OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads, OPENBLAS_NUM_THREADS=threads)
        self.tasks: queue.Queue = queue.Queue()
        self.workers: list[_Worker] = []
        try:
            for _ in range(workers):
                self.workers.append(_Worker(python, env))
            for worker in self.workers:  # each imports Glassbox: fail here, clearly, if one cannot
                worker.call(("spec", spec))
        except BaseException as exc:
            self.close(abort=True)
            if isinstance(exc, ParallelError):
                raise ParallelError(f"cannot start worker processes with {python}: {exc}") from exc
            raise
        self.threads = [threading.Thread(target=self._serve, args=(w,), daemon=True, name="glassbox-worker")
                        for w in self.workers]
        for thread in self.threads:
            thread.start()

    def _serve(self, worker: _Worker) -> None:
        broken: BaseException | None = None
        while True:
            item = self.tasks.get()
            if item is None:
                return
            future, band = item
            if not future.set_running_or_notify_cancel():
                continue
            if broken is not None:  # a dead worker fails what it is handed; the client then aborts
                future.set_exception(broken)
                continue
            try:
                future.set_result(worker.call(("band", band)))
            except BaseException as exc:
                if isinstance(exc, ParallelError):
                    broken = exc
                future.set_exception(exc)

    def submit(self, band: RowBand) -> Future:
        future: Future = Future()
        self.tasks.put((future, band))
        return future

    def close(self, abort: bool = False) -> None:
        for worker in self.workers:
            worker.stop(kill=abort)
        for _ in getattr(self, "threads", []):
            self.tasks.put(None)
        for thread in getattr(self, "threads", []):
            thread.join(timeout=30)
        self.workers = []
        self.threads = []


class DaskCluster:
    """Bands as tasks of the Dask distributed scheduler at ``address``."""

    def __init__(self, spec: BandSpec, address: str, timeout: float = DASK_CONNECT_TIMEOUT):
        try:
            from distributed import Client
        except ImportError as exc:
            raise ParallelError("DASK_SCHEDULER needs the Python package 'distributed' "
                                "(pip install distributed), which is not installed") from exc
        address = address.strip()
        try:
            self.client = Client(address, timeout=f"{timeout:g}s", set_as_default=False)
        except Exception as exc:  # OSError, TimeoutError, ValueError for a malformed address
            raise ParallelError(
                f"cannot reach the Dask scheduler at {address} within {timeout:g} s ({exc}); check the address "
                "(e.g. tcp://host:8786) and that the scheduler runs, or leave DASK_SCHEDULER empty; "
                "nothing was written") from exc
        try:
            threads = sum(self.client.nthreads().values())
            if threads == 0:
                self.client.wait_for_workers(1, timeout=timeout)
                threads = sum(self.client.nthreads().values())
        except Exception as exc:
            self.client.close()
            raise ParallelError(f"the Dask scheduler at {address} has no workers ({exc}); start some "
                                f"(dask worker {address}); nothing was written") from exc
        self.capacity = max(1, threads)
        self.name = f"on the Dask cluster at {address} ({threads} worker thread(s))"
        self.spec = self.client.scatter(spec, broadcast=True, hash=False)

    def submit(self, band: RowBand) -> "_DaskFuture":
        return _DaskFuture(self.client.submit(run_band, self.spec, band, pure=False, priority=-band.index))

    def close(self, abort: bool = False) -> None:
        self.client.close()


class _DaskFuture:
    """A Dask future whose ``result(timeout)`` waits in this thread. Dask's own ``result(timeout=)``
    races its event loop when the result arrives as the timeout ends and then fails with an
    UnboundLocalError (dask/distributed#8514; seen here under load)."""

    #: seconds between looks at the future while waiting
    POLL = 0.01

    def __init__(self, future: Any):
        self.future = future

    def result(self, timeout: float | None = None) -> Any:
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self.future.done():
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"no result within {timeout} s")
            time.sleep(self.POLL)
        return self.future.result()

    def cancel(self) -> bool:
        return self.future.cancel()


def ordered_results(backend: Any, bands: Sequence[RowBand], in_flight: int,
                    is_cancelled: Callable[[], bool] | None = None) -> Iterator[BandResult]:
    """Results of ``bands`` from ``backend``, in order, at most ``in_flight`` submitted at a
    time; raises :class:`Cancelled` as soon as ``is_cancelled`` says so while it waits. Bands
    still pending when the consumer stops are cancelled; closing the backend (``close(abort=)``,
    which stops running workers) is the caller's job."""
    is_cancelled = is_cancelled or (lambda: False)
    pending: list[Any] = []
    queue = list(bands)
    try:
        while queue or pending:
            while queue and len(pending) < max(1, in_flight):
                pending.append(backend.submit(queue.pop(0)))
            result = _wait(pending.pop(0), is_cancelled)
            yield result
    finally:
        for future in pending:
            try:
                future.cancel()
            except Exception:
                pass


def _wait(future: Any, is_cancelled: Callable[[], bool]) -> BandResult:
    while True:
        if is_cancelled():
            raise Cancelled("cancelled by the user; no output was written")
        try:
            return future.result(timeout=_POLL)
        except TimeoutError:
            continue
        except GlassboxError:
            raise
        except Exception as exc:
            if type(exc).__name__ == "KilledWorker":
                raise ParallelError(f"a Dask worker died running a row band ({exc}); nothing was written") from exc
            raise


"""Where a run's logs go: the console shows ssb's own output, the rest is kept in the run.

A successful `ssb run` prints stage headers, progress bars, summary tables and where the
report is. Ray, Ray Data, Ray Train, vLLM and transformers log a great deal at INFO, and the
engines' worker processes print tracebacks while Ray tears actors down after the work is
done; shown on the console, a newcomer reads that as a crash. So, unless `--verbose`:
- library loggers and Python warnings go to `<run_dir>/logs/driver.log`, not the console
  (ssb's own loggers keep the console at the level asked for);
- what native code (Ray's C++ core worker in this process, e.g. its warning that Ray Data's
  actors keep their constructor arguments in the object store) writes straight to file
  descriptor 2 goes to `<run_dir>/logs/native.log`, while Python's sys.stderr (ssb's own
  messages, progress bars, a failure's one line) stays on the console;
- Ray does not forward its workers' output to the driver (`ray.log_to_driver: false`), and
  once the command ends the worker logs of a local Ray session are copied to
  `<run_dir>/logs/ray/`, beside the run they belong to.
A failure still prints its one-line error, followed by where these logs are. A remote run
directory (s3://...) cannot hold logs/: there the CLI shows everything on the console, as
with `--verbose`, and says so.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ssb.layout import RunLayout

# Library loggers whose INFO chatter belongs in the log file, not on the console. Not torch:
# its modules keep console handlers of their own, and INFO on its root logger would wake them.
LIBRARIES = ("ray", "vllm", "transformers", "urllib3", "filelock", "httpx", "py.warnings")
_HANDLER_NAME = "ssb-run-log"


def log_dir(run_dir: str) -> Path | None:
    """`<run_dir>/logs` for a local run directory; None for remote ones (s3://, gs://), whose
    logs stay on the console (the CLI turns `ray.log_to_driver` on and says so)."""
    layout = RunLayout(run_dir)
    return None if layout.remote else layout.logs


class _LazyFile(logging.FileHandler):
    """Creates its folder and file at the first record: a command refused before it starts
    leaves no run directory behind."""

    def __init__(self, path: Path):
        super().__init__(path, delay=True)

    def _open(self):  # type: ignore[override]
        Path(self.baseFilename).parent.mkdir(parents=True, exist_ok=True)
        return super()._open()


def route_library_logs(run_dir: str) -> Path | None:
    """Sends library loggers and warnings to `<run_dir>/logs/driver.log`; returns the folder."""
    folder = log_dir(run_dir)
    if folder is None:
        return None
    handler = _LazyFile(RunLayout(run_dir).driver_log)
    handler.name = _HANDLER_NAME
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.captureWarnings(True)
    # Ray and Ray Data attach their console handlers when imported: imported first, so that
    # those handlers exist to be replaced (vLLM is imported by the engine actors, not here).
    import ray  # noqa: F401
    import ray.data  # noqa: F401

    for name, logger in _library_loggers():
        for old in [h for h in logger.handlers if h.name == _HANDLER_NAME]:
            logger.removeHandler(old)  # an earlier run's file, in the same process
            old.close()
        # vLLM and Ray attach console handlers of their own: those go, the file takes their place.
        for console in [h for h in logger.handlers if isinstance(h, logging.StreamHandler)
                        and not isinstance(h, logging.FileHandler)]:
            logger.removeHandler(console)
        if name in LIBRARIES:
            logger.addHandler(handler)
            logger.setLevel(logging.INFO)
            logger.propagate = False
        else:
            logger.propagate = True  # to its library's logger, and so to the file
    return folder


@contextmanager
def native_stderr(run_dir: str) -> Iterator[Path | None]:
    """For its length, file descriptor 2 is `<run_dir>/logs/native.log` and sys.stderr a new
    stream on the console (module doc); handlers that wrote to the old sys.stderr follow it.
    The file is removed again when nothing was written to it."""
    folder = log_dir(run_dir)
    if folder is None:
        yield None
        return
    path = RunLayout(run_dir).native_log
    made = [p for p in (folder, *folder.parents) if not p.exists()]  # deepest first
    folder.mkdir(parents=True, exist_ok=True)
    old = sys.stderr
    old.flush()
    console = os.dup(2)
    stream = open(console, "w", buffering=1, encoding=getattr(old, "encoding", None) or "utf-8",
                  errors="backslashreplace", closefd=False)
    native = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(native, 2)
    os.close(native)
    moved = _repoint_handlers(old, stream)
    sys.stderr = stream
    try:
        yield path
    finally:
        stream.flush()
        sys.stderr = old
        for handler in moved:
            handler.setStream(old)
        os.dup2(console, 2)
        os.close(console)
        stream.close()
        if path.exists() and path.stat().st_size == 0:
            path.unlink()
            for created in made:  # a command refused early leaves no run directory behind
                if any(created.iterdir()):
                    break
                created.rmdir()


def _repoint_handlers(old: object, new: object) -> list[logging.StreamHandler]:
    """The console handlers writing to `old` (e.g. logging.basicConfig's), set to `new`."""
    loggers = [logging.root, *(lg for lg in logging.root.manager.loggerDict.values() if isinstance(lg, logging.Logger))]
    moved = []
    for logger in loggers:
        for handler in logger.handlers:
            # logging's last-resort handler reads sys.stderr itself (its stream can't be set).
            if isinstance(handler, logging.StreamHandler) and not isinstance(handler, type(logging.lastResort)) \
                    and handler.stream is old:
                handler.setStream(new)
                moved.append(handler)
    return moved


def _library_loggers() -> list[tuple[str, logging.Logger]]:
    """The libraries' loggers, and every logger below them that exists by now."""
    names = set(LIBRARIES) | {n for n in logging.root.manager.loggerDict
                              if any(n.startswith(lib + ".") for lib in LIBRARIES)}
    return [(n, logging.getLogger(n)) for n in sorted(names)]


def save_worker_logs(run_dir: str) -> Path | None:
    """Copies this process's local Ray session logs (workers, raylet, GCS) to `<run_dir>/logs/ray`.

    Nothing for a remote cluster: its workers' logs stay on its nodes (and in its dashboard)."""
    folder = log_dir(run_dir)
    session = _local_session_logs()
    if folder is None or session is None:
        return None
    target = RunLayout(run_dir).worker_logs
    target.mkdir(parents=True, exist_ok=True)
    for path in session.iterdir():
        if path.is_file() and path.suffix in (".out", ".err", ".log"):
            shutil.copy2(path, target / path.name)
    return target


def _local_session_logs() -> Path | None:
    import ray

    if not ray.is_initialized():
        return None
    # Ray has no public accessor for the session directory; the node object of a local
    # cluster's driver holds it. A driver attached to a remote cluster has no local workers.
    node = getattr(ray._private.worker.global_worker, "node", None)
    if node is None or not getattr(node, "head", False):
        return None
    path = Path(node.get_logs_dir_path())
    return path if path.is_dir() else None

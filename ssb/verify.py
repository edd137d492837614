"""Final-answer extraction and symbolic equivalence, on top of math-verify.

`extract_answer` is pure string work: linear-time, bounded input, safe anywhere.
Equivalence runs math-verify (sympy), which can take unbounded time on hostile input
(`9^{9^{9^9}}`). math-verify's own time-outs use `signal.alarm`, which only works in the
main thread, so `Verifier` runs it in a long-lived child process with those time-outs off
and enforces the deadline from the parent: on a time-out the child is killed and a fresh
one (forked from a clean interpreter that has sympy loaded) starts on the next call. That
works from threads, scripts without a main guard, standard input, notebooks, Ray actors and
Serve replicas. Nothing here evaluates its input as Python.
"""

from __future__ import annotations

import atexit
import logging
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from multiprocessing.connection import Connection

from ssb.records import Verdict

MAX_SCAN_CHARS = 20_000  # answers live at the end of a response; never scan more than this
_START_TIMEOUT_S = 120.0  # importing sympy in a fresh child; not part of any item's deadline

# Tokens for one left-to-right pass over braces. `\\` and `\{`/`\}` come first so that
# escaped braces (LaTeX set braces, line breaks before a brace) never count.
_BRACE_TOKENS = re.compile(r"\\\\|\\[{}]|\\(?:boxed|fbox)\s*\{|[{}]")
_ANSWER_IS = re.compile(r"(?i)(?:the\s+(?:final\s+)?answer\s+is|answer\s*:)[ \t:]*")
_SENTENCE_END = re.compile(r"\.(?:\s|$)")
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")
# "18 dollars", "$1,200 per month": a number then plain words that math-verify's unit list
# may not know. Words go into \text{} so math-verify's own unit stripping removes them.
# The number part is unambiguous (one way to match each prefix), so it cannot backtrack badly.
_NUMBER_THEN_WORDS = re.compile(r"(\\?\$?\s*-?(?:\d[\d,]*(?:\.\d+)?|\.\d+)%?)\s+([A-Za-z][A-Za-z '.-]*)")
_MATH_WORDS = {"pi", "sqrt", "i", "e", "inf", "infty", "infinity", "x", "y", "z", "n"}


def _last_boxed(text: str) -> str | None:
    """Content of the `\\boxed{}`/`\\fbox{}` that opens last among those that close."""
    stack: list[int | None] = []  # content start for a box's brace, None for a plain brace
    last: tuple[int, int] | None = None
    for m in _BRACE_TOKENS.finditer(text):
        tok = m.group()
        if tok.endswith("{") and tok.startswith("\\") and len(tok) > 2:
            stack.append(m.end())
        elif tok == "{":
            stack.append(None)
        elif tok == "}" and stack:
            start = stack.pop()
            if start is not None and (last is None or start > last[0]):
                last = (start, m.start())
    return text[last[0] : last[1]].strip() if last else None


def _after_hashes(text: str) -> str | None:
    idx = text.rfind("####")
    if idx < 0:
        return None
    lines = [ln.strip() for ln in text[idx + 4 :].splitlines() if ln.strip()]
    return lines[0] if lines else None


def _answer_is(text: str) -> str | None:
    last = None
    for last in _ANSWER_IS.finditer(text):
        pass
    if last is None:
        return None
    # The answer runs to the end of its line or sentence; markdown bold is not part of it.
    found = text[last.end() :].split("\n", 1)[0]
    found = _SENTENCE_END.split(found, maxsplit=1)[0].strip().strip("*").strip()
    if len(found) > 1 and found.startswith("$") and found.endswith("$"):
        found = found.strip("$")
    return found.strip() or None


def _last_number(text: str) -> str | None:
    found = None
    for m in _NUMBER.finditer(text):
        found = m.group()
    return found.rstrip(",") if found else None


_FALLBACKS = {"gsm8k": _after_hashes, "answer_is": _answer_is, "last_number": _last_number}


def extract_answer(text: str, fallbacks: Sequence[str] = ("answer_is",)) -> str | None:
    """The last boxed answer in `text`, else the first fall-back that finds one."""
    for name in fallbacks:
        if name not in _FALLBACKS:
            raise ValueError(f"unknown fall-back {name!r}; choose from {sorted(_FALLBACKS)}")
    text = text[-MAX_SCAN_CHARS:]
    found = _last_boxed(text)
    for name in fallbacks:
        if found:
            break
        found = _FALLBACKS[name](text)
    return (found.strip() or None) if found is not None else None


def _as_latex(answer: str) -> str:
    """A bare answer as something math-verify's boxed extraction takes whole."""
    answer = answer.strip()
    if answer.endswith(".") and not answer.endswith(".."):
        answer = answer[:-1].rstrip()
    m = _NUMBER_THEN_WORDS.fullmatch(answer) if len(answer) < 200 else None
    if m and not (set(m.group(2).lower().split()) & _MATH_WORDS):
        answer = f"{m.group(1)} \\text{{ {m.group(2)}}}"
    return "\\boxed{" + answer + "}"


def _equivalent_unguarded(pred: str, gold: str) -> bool:
    """math-verify with its signal-based time-outs off: call only where a deadline is enforced."""
    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify

    config = [LatexExtractionConfig(boxed_match_priority=0), ExprExtractionConfig()]
    gold_parsed = parse(_as_latex(gold), config, parsing_timeout=None)  # type: ignore[arg-type]
    pred_parsed = parse(_as_latex(pred), config, parsing_timeout=None)  # type: ignore[arg-type]
    if not gold_parsed or not pred_parsed:
        return False
    return bool(verify(gold_parsed, pred_parsed, timeout_seconds=None))


def _warm_up() -> None:
    logging.getLogger("math_verify").setLevel(logging.ERROR)  # its "time-out disabled" warning
    # Pay the sympy import and math-verify's lazily compiled patterns once, before any deadline.
    _equivalent_unguarded("1", "1")


def _serve(conn: Connection) -> None:
    """Worker: answer lists of (pred, gold) one result at a time, until EOF."""
    conn.send("ready")
    while True:
        try:
            items = conn.recv()
        except (EOFError, OSError):
            return  # the parent is gone
        for pred, gold in items:
            try:
                ok = _equivalent_unguarded(pred, gold)
            except BaseException:  # noqa: BLE001  (RecursionError, MemoryError: a wrong answer)
                ok = False
            conn.send(ok)


# Why not multiprocessing: its spawn and forkserver children re-import the caller's __main__,
# so a script without a main guard re-runs itself in the child (and dies starting a process
# while "bootstrapping"), and a main read from standard input or a notebook cannot be found at
# all; its forkserver is also one per process, with a preload list the application may set
# too. Instead a plain `python -c` child (the zygote) gets the caller's sys.path and imports
# only this module and math-verify. It never runs a thread, so it can fork a worker per
# (re)start safely: a restart after a time-out takes milliseconds, not an interpreter start.
_ZYGOTE_CODE = "import sys; sys.path[:] = sys.argv[2:]; from ssb.verify import _zygote; _zygote(int(sys.argv[1]))"
_FORK, _KILL = b"f", b"k"  # requests to the zygote; a fork request carries the worker's socket


def _zygote(ctl_fd: int) -> None:
    """Runs one worker at a time for one `Verifier`; each request first ends the current one.
    Reaping it here, by its parent, means a pid is never signalled after it could be reused."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C in a terminal is the caller's to handle
    ctl = socket.socket(fileno=ctl_fd)
    _warm_up()
    ctl.sendall(b"r")
    worker = 0
    while True:
        try:
            request, fds, _, _ = socket.recv_fds(ctl, 1, 1)
        except OSError:
            request, fds = b"", []
        if worker:
            try:
                os.kill(worker, signal.SIGKILL)
            except ProcessLookupError:
                pass
            os.waitpid(worker, 0)
            worker = 0
        if request != _FORK or not fds:
            for fd in fds:
                os.close(fd)
            if request == _KILL:
                continue
            return  # EOF: the Verifier closed or its process is gone
        worker = os.fork()
        if worker == 0:
            try:
                ctl.close()
                _serve(Connection(fds[0]))
            finally:
                os._exit(0)
        os.close(fds[0])


class VerifyTimeout(Exception):
    """Raised inside `Verifier` when the child misses a deadline; callers see a verdict."""


class Verifier:
    """Equivalence checks with a hard per-item deadline, usable from any thread."""

    def __init__(self, timeout_s: float = 5.0, fallbacks: Sequence[str] = ("answer_is",)):
        self.timeout_s = timeout_s
        self.fallbacks = tuple(fallbacks)
        self.stats: dict[str, int] = {"checks": 0, "timeouts": 0, "restarts": 0}
        self._lock = threading.Lock()
        self._zygote: subprocess.Popen[bytes] | None = None
        self._ctl: socket.socket | None = None
        self._conn: Connection | None = None  # to the current worker
        self._started = False  # a later start is a restart

    def start(self) -> None:
        """Start the child now (a no-op while it runs), so no call pays for its start-up."""
        with self._lock:
            self._ensure_child()

    def check(self, text: str, gold: str) -> tuple[str | None, str]:
        return self.check_many([(text, gold)])[0]

    def check_many(self, items: Sequence[tuple[str, str]]) -> list[tuple[str | None, str]]:
        preds = [extract_answer(text, self.fallbacks) for text, _ in items]
        todo = [(i, p, gold) for i, (p, (_, gold)) in enumerate(zip(preds, items)) if p]
        oks = self._run([(p, gold) for _, p, gold in todo], self.timeout_s)
        verdicts = [Verdict.NO_ANSWER] * len(items)
        for (i, _, _), ok in zip(todo, oks):
            verdicts[i] = Verdict.TIMEOUT if ok is None else Verdict.CORRECT if ok else Verdict.INCORRECT
        with self._lock:
            self.stats["checks"] += len(items)
        return list(zip(preds, verdicts))

    def equivalent(self, pred: str | None, gold: str) -> bool:
        return self._equivalent(pred, gold, self.timeout_s)

    def _equivalent(self, pred: str | None, gold: str, timeout_s: float) -> bool:
        if pred is None or not pred.strip():
            return False
        with self._lock:
            self.stats["checks"] += 1
        return self._run([(pred, gold)], timeout_s)[0] is True

    def _run(self, pairs: list[tuple[str, str]], timeout_s: float) -> list[bool | None]:
        """One request for all pairs; None marks a pair that missed its deadline."""
        results: list[bool | None] = []
        with self._lock:
            while len(results) < len(pairs):
                conn = self._ensure_child()
                try:
                    conn.send(pairs[len(results) :])
                    while len(results) < len(pairs):
                        if not conn.poll(timeout_s):
                            raise VerifyTimeout
                        results.append(bool(conn.recv()))
                except (VerifyTimeout, EOFError, OSError):
                    # A hung or crashed child: give this pair up, restart, resend the rest.
                    results.append(None)
                    self.stats["timeouts"] += 1
                    self._kill_child()
        return results

    def _ensure_child(self) -> Connection:
        # Between requests a live worker has sent nothing: pending input means it died (EOF).
        if self._conn is not None and not self._conn.poll(0):
            return self._conn
        if self._started:
            self.stats["restarts"] += 1
        self._started = True
        self._kill_child()
        ctl = self._ensure_zygote()
        ours, theirs = socket.socketpair()
        conn = Connection(ours.detach())
        try:
            socket.send_fds(ctl, [_FORK], [theirs.fileno()])
            ready = conn.poll(_START_TIMEOUT_S) and conn.recv() == "ready"
        except (EOFError, OSError):
            ready = False
        finally:
            theirs.close()
        if not ready:
            conn.close()
            self._stop_zygote()  # the next call starts a fresh one
            raise RuntimeError("the verifier's child process did not start")
        self._conn = conn
        return conn

    def _ensure_zygote(self) -> socket.socket:
        if self._zygote is not None and self._zygote.poll() is None and self._ctl is not None:
            return self._ctl
        self._stop_zygote()
        if not sys.executable:
            raise RuntimeError("the verifier needs a Python executable to run its child (sys.executable is empty)")
        ours, theirs = socket.socketpair()
        with theirs:
            self._zygote = subprocess.Popen(
                [sys.executable, "-c", _ZYGOTE_CODE, str(theirs.fileno()), *sys.path],
                pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
        self._ctl = ours
        try:
            ours.settimeout(_START_TIMEOUT_S)
            ready = ours.recv(1) == b"r"
            ours.settimeout(None)
        except OSError:  # socket.timeout included
            ready = False
        if not ready:
            self._stop_zygote()
            raise RuntimeError("the verifier's child process did not start")
        return ours

    def _kill_child(self) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        conn.close()
        if self._ctl is not None:
            try:
                self._ctl.sendall(_KILL)  # a hung worker stops burning a core now
            except OSError:
                self._stop_zygote()

    def _stop_zygote(self) -> None:
        ctl, proc, self._ctl, self._zygote = self._ctl, self._zygote, None, None
        if ctl is not None:
            ctl.close()  # EOF: the zygote kills its worker and exits
        if proc is not None:
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def close(self) -> None:
        with self._lock:
            self._kill_child()
            self._stop_zygote()

    def __enter__(self) -> Verifier:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self._kill_child()
            self._stop_zygote()
        except Exception:  # noqa: BLE001  (interpreter shutdown: best effort only)
            pass


class VerifierPool:
    """`workers` Verifiers (a child process each) behind the Verifier interface: calls from
    different threads run side by side, each on whichever verifier is free."""

    def __init__(self, workers: int = 1, timeout_s: float = 5.0, fallbacks: Sequence[str] = ("answer_is",)):
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        self.verifiers = [Verifier(timeout_s=timeout_s, fallbacks=fallbacks) for _ in range(workers)]
        self._free: queue.SimpleQueue[Verifier] = queue.SimpleQueue()
        for verifier in self.verifiers:
            self._free.put(verifier)

    @contextmanager
    def _one(self) -> Iterator[Verifier]:
        verifier = self._free.get()
        try:
            yield verifier
        finally:
            self._free.put(verifier)

    def start(self) -> None:
        for verifier in self.verifiers:
            verifier.start()

    def check_many(self, items: Sequence[tuple[str, str]]) -> list[tuple[str | None, str]]:
        with self._one() as verifier:
            return verifier.check_many(items)

    def equivalent(self, pred: str | None, gold: str) -> bool:
        with self._one() as verifier:
            return verifier.equivalent(pred, gold)

    def close(self) -> None:
        for verifier in self.verifiers:
            verifier.close()

    def __enter__(self) -> VerifierPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


_default: Verifier | None = None
_default_lock = threading.Lock()


def _default_verifier() -> Verifier:
    global _default
    with _default_lock:
        if _default is None:
            _default = Verifier()
            atexit.register(_default.close)
        return _default


def is_equivalent(pred: str | None, gold: str, timeout_s: float = 5.0) -> bool:
    """Whether `pred` means the same as `gold`; a time-out counts as not equivalent."""
    if pred is None or not pred.strip():
        return False
    return _default_verifier()._equivalent(pred, gold, timeout_s)

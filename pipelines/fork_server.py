"""Loaded first in the fork server that CPU engine cores are forked from (pipelines/engine.py
`prestart_engine_core`): every process it forks dies with it.

A spawned engine core is a child of its engine actor, and Ray stops an exiting worker's
children. A forked one is the fork server's child, a grandchild of the actor: when Ray stops
the fork server it would live on, orphaned, holding its KV cache. With the parent-death signal
set in each forked child it goes with the server. The fork server forks from its one thread,
so the signal follows the server process itself, not a thread of it.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

# Set in the fork server's environment by `prestart_engine_core`; anywhere else importing this
# module changes nothing.
MARK = "SSB_ENGINE_FORK_SERVER"
_PR_SET_PDEATHSIG = 1


_forking = 0  # the pid of the process that last forked, as its child sees it


def _note_the_forking_process() -> None:
    global _forking
    _forking = os.getpid()


def _die_with_the_server(server: int) -> None:
    if _forking != server:
        return  # a fork inside an engine core: its children are its own business
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        os._exit(70)  # no fate-sharing: better no engine than one that may outlive its actor
    if os.getppid() != server:  # the server died between the fork and the prctl
        os._exit(70)


if os.environ.get(MARK) == "1" and sys.platform.startswith("linux"):
    _server = os.getpid()
    os.register_at_fork(before=_note_the_forking_process, after_in_child=lambda: _die_with_the_server(_server))

"""`ssb inspect RUN_DIR`: the inspector (services/inspector/) over one run directory, served on
this machine. No Ray: it reads the files the run left behind.

    ssb inspect runs/default                 # inspector: http://127.0.0.1:8765/
    ssb inspect runs/default --port 0        # a free port; the line printed names it
"""

from __future__ import annotations

import argparse
import socket
import sys
import threading
from pathlib import Path
from typing import Any

HELP = "browse a run directory in a local web app: curation funnel, every problem's trace, answers, evaluation"


def add_parser(sub: Any) -> None:
    p = sub.add_parser("inspect", help=HELP, description=HELP)
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run directory with a curated store (curated/manifest.json)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8765, help="port (default 8765; 0 picks a free one)")
    p.set_defaults(fn=run)


def _bind(host: str, port: int) -> socket.socket:
    """The listening socket, bound before the URL is printed so `--port 0` can name its port."""
    family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(128)
    return sock


def _url(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://{f'[{host}]' if ':' in host else host}:{port}/"


def _warm_up(run_dir: str) -> None:
    from ssb.run_view import RunView

    RunView(run_dir).token_text(1)  # never raises: without a tokenizer, pages show token ids


def run(args: argparse.Namespace) -> int:
    from ssb.layout import RunLayout

    layout = RunLayout(args.run_dir)
    if layout.remote or not Path(layout.manifest).is_file():
        print(f"ssb inspect: {args.run_dir} has no curated store ({layout.manifest} does not exist)", file=sys.stderr)
        return 2
    import uvicorn

    from services.inspector import create_app

    try:
        sock = _bind(args.host, args.port)
    except OSError as e:
        print(f"ssb inspect: cannot listen on {args.host}:{args.port}: {e.strerror or e}", file=sys.stderr)
        return 2
    server = uvicorn.Server(uvicorn.Config(create_app(args.run_dir), log_level="warning", access_log=False))
    print(f"inspector: {_url(sock)}", flush=True)
    # The tokenizer (and transformers' import) takes seconds: load it while the first pages are read.
    threading.Thread(target=_warm_up, args=(args.run_dir,), daemon=True).start()
    try:
        server.run(sockets=[sock])
    except KeyboardInterrupt:  # a second Ctrl-C while uvicorn shuts down
        pass
    finally:
        sock.close()
    return 0

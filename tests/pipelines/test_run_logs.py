"""What native code writes to file descriptor 2 during a command goes to the run's logs, while
Python's stderr (ssb's messages, progress bars) stays on the console."""

from __future__ import annotations

import logging
import os
import sys

from pipelines.run_logs import native_stderr


def test_native_writes_to_fd_2_go_to_the_run_and_python_stderr_stays_on_the_console(tmp_path, capfd):
    handler = logging.StreamHandler(sys.stderr)
    logger = logging.getLogger("ssb-test-native")
    logger.addHandler(handler)
    try:
        with native_stderr(str(tmp_path)) as path:
            os.write(2, b"[2026-12-03 10:42:43,695 E 4965 4965] core_worker.cc:2465: noise\n")
            print("stage header", file=sys.stderr)
            logger.warning("a warning that means something")
    finally:
        logger.removeHandler(handler)
    assert path == tmp_path / "logs" / "native.log"
    assert "core_worker.cc" in path.read_text() and "stage header" not in path.read_text()
    err = capfd.readouterr().err
    assert "stage header" in err and "a warning that means something" in err and "core_worker" not in err
    os.write(2, b"after\n")  # fd 2 is the console again
    assert "after" in capfd.readouterr().err and "after" not in path.read_text()


def test_nothing_written_leaves_no_run_directory(tmp_path):
    with native_stderr(str(tmp_path / "run")):
        print("only python", file=sys.stderr)
    assert not (tmp_path / "run").exists()

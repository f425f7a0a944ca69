"""Child processes the tests start (servers, CLI commands): one way to stop them."""

from __future__ import annotations

import signal
import subprocess


def stop_process(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM (the server drains and exits), then SIGKILL when it does not go within 15 s."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)

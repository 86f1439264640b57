"""``traverz demo`` stops what it started on SIGTERM, not only on Ctrl-C."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time


def test_sigterm_runs_the_demos_cleanup_and_its_child_is_stopped() -> None:
    """A process set up as the demo is, holding a child the way ``run``'s ``finally`` stops them."""
    script = textwrap.dedent(
        """
        import subprocess, sys, time
        from pipeline import demo
        demo.stop_like_ctrl_c()
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
        print(child.pid, flush=True)
        try:
            time.sleep(60)
        except KeyboardInterrupt:
            pass
        finally:
            child.terminate()
            child.wait(10)
            print("stopped", flush=True)
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    child = int(proc.stdout.readline())
    os.kill(proc.pid, signal.SIGTERM)
    out, _ = proc.communicate(timeout=20)
    assert "stopped" in out and proc.returncode == 0
    time.sleep(0.1)
    try:
        os.kill(child, 0)
        alive = True
    except ProcessLookupError:
        alive = False
    assert not alive  # without the handler the parent died at once and the child ran on

"""The local executor's workers outlive no parent: a step killed with SIGKILL (no clean-up runs) leaves no
worker process computing or writing files for a run nobody will finish."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from xgen_data.execute import local

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SCRIPT = """
import os, sys, time
sys.path.insert(0, {root!r})
from xgen_data.execute.contract import ItemResult, WorkItem
from xgen_data.execute.local import LocalExecutor

def item(folder, i):
    open(os.path.join(folder, f"worker-{{os.getpid()}}"), "w").close()
    time.sleep(120)
    return ItemResult(str(i))

if __name__ == "__main__":
    list(LocalExecutor(2).map("sleep", item, [WorkItem(str(i), (sys.argv[1], i)) for i in range(2)]))
"""


def _alive(pid: int) -> bool:
    """Running (a zombie waiting for its reaper is not)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_workers_exit_when_the_parent_is_killed(tmp_path):
    script = tmp_path / "step.py"
    script.write_text(SCRIPT.format(root=ROOT))
    marks = tmp_path / "marks"
    marks.mkdir()
    parent = subprocess.Popen([sys.executable, str(script), str(marks)])
    workers: list[int] = []
    try:
        deadline = time.time() + 90
        while len(workers) < 2 and time.time() < deadline and parent.poll() is None:
            time.sleep(0.2)
            workers = [int(n.split("-")[1]) for n in os.listdir(marks)]
        assert len(workers) == 2, "the workers did not start"
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        deadline = time.time() + 10 * local.PARENT_POLL_SECONDS
        while any(_alive(p) for p in workers) and time.time() < deadline:
            time.sleep(0.2)
        assert not any(_alive(p) for p in workers), "a worker outlived its parent"
    finally:
        for pid in workers:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
        if parent.poll() is None:
            parent.kill()


def _fails_with(kind: str, key: str):
    """One item: raise an xgen input error, a plain exception (a bug) or an OSError (the environment)."""
    from xgen_data.errors import InputError

    raise {"input": InputError(f"{key}:12: bad record"), "bug": KeyError("text"),
           "os": OSError(28, "No space left on device")}[kind]


def test_an_item_error_exits_as_its_cause(tmp_path, monkeypatch):
    """docs/cli.md's table through an item: bad input 3, a bug 4 (with the traceback file), the environment 1."""
    from cli.common import to_cli_error
    from xgen_data.execute.contract import ItemError, WorkItem

    monkeypatch.setenv("XGEN_CRASH_DIR", str(tmp_path))
    codes = {}
    for kind in ("input", "bug", "os"):
        try:
            list(local.LocalExecutor(1).map("probe", _fails_with, [WorkItem("part x/0", (kind, "in.jsonl"))]))
        except ItemError as exc:
            codes[kind] = (exc.exit_code, to_cli_error(exc).exit_code)
    assert codes == {"input": (3, 3), "bug": (4, 4), "os": (1, 1)}
    assert len(list(tmp_path.glob("xgen-bug-*.txt"))) == 1  # the bug's traceback, for its report
    assert ItemError("probe", "part x/0", "worker process died", system=True).exit_code == 1

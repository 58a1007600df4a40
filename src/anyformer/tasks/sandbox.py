"""Running untrusted Python (generated code, doctests) in a contained subprocess.

Code a model writes is never run in the caller's interpreter. :func:`run_python` starts a
fresh interpreter in isolated mode (``-I``: no user site, no ``PYTHONPATH``, no working
directory on ``sys.path``) inside an empty temporary directory, with

- **resource limits** set before the interpreter starts: CPU seconds (``RLIMIT_CPU``),
  address space (``RLIMIT_AS``), size of any file it writes (``RLIMIT_FSIZE``), open
  files, no core dumps, and — where the kernel enforces it — no further processes
  (``RLIMIT_NPROC``);
- **a wall-clock timeout**: the whole process group is killed when it runs past it;
- **an empty environment**: only ``PATH``, ``HOME`` and ``TMPDIR`` (both the temporary
  directory) and fixed locale/hash settings — no inherited secrets;
- **an audit hook** (PEP 578) installed before the submitted code runs, which refuses
  writing, creating, renaming or deleting files outside the temporary directory, starting
  processes (``fork``, ``exec``, ``subprocess``, ``posix_spawn``, ``system``), sockets,
  loading native code with ``ctypes`` and changing the limits; a refused operation raises
  ``PermissionError`` inside the sandboxed code;
- **a lower-privileged user** when the caller runs as root and the interpreter is
  readable by ``nobody`` (probed once): then the kernel's file permissions and process
  limit hold even against code that escapes the audit hook.

The outcome is a :class:`SandboxResult` whose ``status`` says how it ended: ``ok``,
``error`` (a non-zero exit, e.g. an exception or a failed doctest), ``timeout`` (wall
clock), ``cpu`` (CPU limit), ``memory`` (allocation refused), ``blocked`` (the audit hook
refused an operation) or ``file_size`` (a file, or its standard output or error, grew
past ``file_bytes``). Standard output and error go to files outside the sandbox directory,
so they obey the same size limit; at most ``max_output_bytes`` of each are returned.
"""

from __future__ import annotations

import contextlib
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from dataclasses import dataclass
from functools import cache
from typing import Literal

Status = Literal["ok", "error", "timeout", "cpu", "memory", "blocked", "file_size"]

#: Marker the audit hook prints to stderr when it refuses an operation.
BLOCKED_MARK = "anyformer-sandbox: blocked"

#: Runs inside the sandbox before the submitted code: installs the audit hook, then runs
#: ``main.py`` (the submitted code) as ``__main__``. The hook cannot be removed.
_BOOTSTRAP = textwrap.dedent(
    r"""
    import os, sys
    ROOT = os.path.realpath(os.getcwd())
    MARK = %(mark)r
    WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_TRUNC
    DENY = {
        "os.fork", "os.forkpty", "os.exec", "os.spawn", "os.posix_spawn", "os.system",
        "os.kill", "os.killpg", "subprocess.Popen", "pty.spawn", "socket.__new__",
        "socket.connect", "socket.bind", "socket.getaddrinfo", "ctypes.dlopen",
        "ctypes.dlsym", "ctypes.call_function", "resource.setrlimit", "resource.prlimit",
        "os.chroot", "os.setuid", "os.setgid", "sys.addaudithook", "os.add_dll_directory",
        "_posixsubprocess.fork_exec",
    }
    DENY_IMPORTS = {"ctypes", "_ctypes", "_posixsubprocess", "multiprocessing", "socket",
                    "_socket", "pty", "resource"}
    PATH_EVENTS = {"os.remove", "os.rmdir", "os.mkdir", "os.rename", "os.chmod", "os.chown",
                   "os.symlink", "os.link", "os.truncate", "os.utime", "shutil.rmtree",
                   "shutil.copyfile", "shutil.move", "os.mkfifo", "os.mknod"}

    def inside(path):
        try:
            path = os.fsdecode(path) if not isinstance(path, int) else None
        except Exception:
            return False
        if path is None:
            return True
        real = os.path.realpath(os.path.join(ROOT, path))
        return real == ROOT or real.startswith(ROOT + os.sep)

    def refuse(what):
        sys.stderr.write(MARK + " " + what + "\n")
        sys.stderr.flush()
        raise PermissionError("sandbox: " + what + " is not allowed")

    def hook(event, args):
        if event in DENY:
            refuse(event)
        if event == "import" and args and args[0].split(".")[0] in DENY_IMPORTS:
            refuse("import " + args[0])
        if event == "open":
            path, mode, flags = args
            writes = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
                isinstance(flags, int) and flags & WRITE_FLAGS)
            if writes and path is not None and not inside(path):
                refuse("writing " + str(path))
        elif event in PATH_EVENTS:
            for p in args[:2]:
                if isinstance(p, (str, bytes, os.PathLike)) and not inside(p):
                    refuse(event + " " + str(p))

    sys.addaudithook(hook)
    del hook
    import runpy
    runpy.run_path("main.py", run_name="__main__")
    """
)


@dataclass(frozen=True)
class SandboxLimits:
    """Limits of one sandboxed run (seconds and bytes)."""

    wall_seconds: float = 10.0
    cpu_seconds: int = 5
    memory_bytes: int = 512 * 2**20
    file_bytes: int = 2**20
    open_files: int = 64
    max_output_bytes: int = 64 * 2**10  # returned of each of stdout and stderr


@dataclass(frozen=True)
class SandboxResult:
    """How a sandboxed run ended, with its (truncated) output."""

    status: Status
    returncode: int | None
    stdout: str
    stderr: str
    wall_seconds: float
    isolation: str  # "user" (ran as nobody) or "hook" (audit hook and limits only)

    @property
    def ok(self) -> bool:
        return self.status == "ok"


def _limits(limits: SandboxLimits, drop_to: int | None, no_processes: bool) -> None:
    """preexec: set the limits (and drop privileges) in the child before exec."""
    resource.setrlimit(resource.RLIMIT_CPU, (limits.cpu_seconds, limits.cpu_seconds + 1))
    resource.setrlimit(resource.RLIMIT_AS, (limits.memory_bytes, limits.memory_bytes))
    resource.setrlimit(resource.RLIMIT_FSIZE, (limits.file_bytes, limits.file_bytes))
    resource.setrlimit(resource.RLIMIT_NOFILE, (limits.open_files, limits.open_files))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    if drop_to is not None:
        os.setgroups([])
        os.setgid(drop_to)
        os.setuid(drop_to)
    if no_processes:
        resource.setrlimit(resource.RLIMIT_NPROC, (1, 1))


NOBODY = 65534


@cache
def _can_drop_privileges() -> bool:
    """True when running as root and ``nobody`` can start this interpreter."""
    if not hasattr(os, "getuid") or os.getuid() != 0:
        return False
    try:
        done = subprocess.run(
            [sys.executable, "-I", "-c", "pass"],
            preexec_fn=lambda: (os.setgroups([]), os.setgid(NOBODY), os.setuid(NOBODY)),
            cwd="/",
            env={"PATH": "/usr/bin:/bin"},
            capture_output=True,
            timeout=30,
        )
    except (OSError, subprocess.SubprocessError):
        return False
    return done.returncode == 0


def _classify(rc: int | None, stderr: str, timed_out: bool, output_full: bool) -> Status:
    if timed_out:
        return "timeout"
    # Python ignores SIGXFSZ: a write past the limit fails with EFBIG ("File too large")
    if rc == -signal.SIGXFSZ or output_full or (rc != 0 and "File too large" in stderr):
        return "file_size"
    if rc == -signal.SIGXCPU:
        return "cpu"
    if BLOCKED_MARK in stderr:
        return "blocked"
    if "MemoryError" in stderr:
        return "memory"
    return "ok" if rc == 0 else "error"


def run_python(code: str, limits: SandboxLimits | None = None, stdin: str = "") -> SandboxResult:
    """Run ``code`` (Python source) in a contained subprocess; see the module docstring."""
    limits = limits or SandboxLimits()
    drop = _can_drop_privileges()
    workdir = tempfile.mkdtemp(prefix="anyformer-sandbox-")
    try:
        with open(os.path.join(workdir, "main.py"), "w", encoding="utf-8") as fh:
            fh.write(code)
        if drop:
            os.chown(workdir, NOBODY, NOBODY)
            os.chown(os.path.join(workdir, "main.py"), NOBODY, NOBODY)
        env = {
            "PATH": "/usr/bin:/bin",
            "HOME": workdir,
            "TMPDIR": workdir,
            "LANG": "C.UTF-8",
            "PYTHONHASHSEED": "0",
            "PYTHONIOENCODING": "utf-8",
        }
        no_processes = drop or (hasattr(os, "getuid") and os.getuid() != 0)
        argv = [sys.executable, "-I", "-c", _BOOTSTRAP % {"mark": BLOCKED_MARK}]
        with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
            start = time.perf_counter()
            proc = subprocess.Popen(
                argv,
                cwd=workdir,
                env=env,
                stdin=subprocess.PIPE,
                stdout=out,
                stderr=err,
                start_new_session=True,
                preexec_fn=lambda: _limits(limits, NOBODY if drop else None, no_processes),
            )
            timed_out = False
            try:
                proc.communicate(stdin.encode(), timeout=limits.wall_seconds)
            except subprocess.TimeoutExpired:
                timed_out = True
                _kill_group(proc)
                proc.wait()
            _kill_group(proc)  # anything it left behind in its session
            wall = time.perf_counter() - start
            stdout, stderr = (_head(f, limits.max_output_bytes) for f in (out, err))
            full = any(os.fstat(f.fileno()).st_size >= limits.file_bytes for f in (out, err))
        return SandboxResult(
            status=_classify(proc.returncode, stderr, timed_out, full),
            returncode=proc.returncode,
            stdout=stdout,
            stderr=stderr,
            wall_seconds=wall,
            isolation="user" if drop else "hook",
        )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _head(fh: object, n: int) -> str:
    fh.seek(0)  # type: ignore[attr-defined]
    return fh.read(n).decode("utf-8", "replace")  # type: ignore[attr-defined]


def _kill_group(proc: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)

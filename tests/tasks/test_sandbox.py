"""The sandbox contains what generated code may try: writing outside its directory,
fork bombs, unbounded allocation, endless loops, endless output, network and native
code; ordinary code and doctests run and report their output."""

from __future__ import annotations

import os
import textwrap

import pytest

from anyformer.tasks.sandbox import SandboxLimits, run_python

pytestmark = pytest.mark.skipif(os.name != "posix", reason="POSIX resource limits")

FAST = SandboxLimits(wall_seconds=10.0, cpu_seconds=2)


def test_ordinary_code_runs_and_returns_its_output():
    res = run_python("print(sum(range(10)))", FAST)
    assert res.status == "ok" and res.stdout.strip() == "45" and res.returncode == 0


def test_doctest_failure_is_an_error_with_its_report():
    code = textwrap.dedent('''
        import doctest
        def add(a, b):
            """
            >>> add(2, 2)
            5
            """
            return a + b
        failed, _ = doctest.testmod()
        raise SystemExit(1 if failed else 0)
    ''')
    res = run_python(code, FAST)
    assert res.status == "error" and "Expected:" in res.stdout


def test_writing_outside_its_directory_is_blocked(tmp_path):
    target = tmp_path / "escaped.txt"
    res = run_python(f"open({str(target)!r}, 'w').write('x')", FAST)
    assert res.status == "blocked"
    assert not target.exists()


def test_writing_inside_its_directory_is_allowed():
    res = run_python("open('ok.txt', 'w').write('x'); print(open('ok.txt').read())", FAST)
    assert res.status == "ok" and res.stdout.strip() == "x"


def test_deleting_outside_its_directory_is_blocked(tmp_path):
    victim = tmp_path / "keep.txt"
    victim.write_text("keep")
    res = run_python(f"import os; os.remove({str(victim)!r})", FAST)
    assert res.status == "blocked" and victim.read_text() == "keep"


def test_fork_bomb_is_contained():
    res = run_python("import os\nwhile True:\n    os.fork()", FAST)
    assert res.status == "blocked"


def test_subprocess_is_blocked():
    res = run_python("import subprocess; subprocess.run(['true'])", FAST)
    assert res.status == "blocked"


def test_unbounded_allocation_is_contained():
    res = run_python("x = []\nwhile True:\n    x.append(bytearray(10**7))", FAST)
    assert res.status == "memory"


def test_endless_loop_hits_the_cpu_limit():
    res = run_python("while True:\n    pass", SandboxLimits(wall_seconds=10.0, cpu_seconds=1))
    assert res.status == "cpu" and res.wall_seconds < FAST.wall_seconds


def test_sleeping_forever_hits_the_wall_clock():
    res = run_python("import time\ntime.sleep(60)", SandboxLimits(wall_seconds=1.0))
    assert res.status == "timeout" and res.wall_seconds < 5


def test_endless_output_is_capped():
    limits = SandboxLimits(wall_seconds=10.0, cpu_seconds=5, file_bytes=2**16)
    res = run_python("while True:\n    print('x' * 1000)", limits)
    assert res.status == "file_size"
    assert len(res.stdout) <= limits.max_output_bytes


def test_network_and_native_code_are_blocked():
    assert run_python("import socket", FAST).status == "blocked"
    assert run_python("import ctypes", FAST).status == "blocked"


def test_environment_secrets_are_not_inherited(monkeypatch):
    monkeypatch.setenv("ANYFORMER_SECRET_TOKEN", "hunter2")
    res = run_python("import os; print(sorted(os.environ))", FAST)
    assert res.status == "ok" and "ANYFORMER_SECRET_TOKEN" not in res.stdout


def test_runs_in_an_empty_temporary_directory():
    res = run_python("import os; print(os.listdir('.'), os.getcwd())", FAST)
    assert res.status == "ok"
    assert res.stdout.startswith("['main.py']") and "anyformer-sandbox-" in res.stdout

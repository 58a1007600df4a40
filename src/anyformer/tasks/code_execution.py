"""Running generated functions against their tests, many per sandbox call, and pass@k.

A :class:`Candidate` is a function's source, the module whose globals it needs (``None``
for self-contained code) and its tests, each a doctest example ``(source, expected
output)``. :func:`run_candidates` writes one program that runs a whole list of them and
runs it once through :func:`~anyformer.tasks.sandbox.run_python` (code a model wrote never
runs in this interpreter). Inside that program every candidate

- is defined in fresh globals with its own copy of the builtins, and the ``builtins``
  module is restored after it (a candidate that rebinds ``len`` changes nothing for the
  next one);
- runs under ``try/except BaseException`` (an exception, ``SystemExit`` or a refused
  operation — writing outside the sandbox's directory, starting a process — fails it);
- has a budget of CPU seconds (``per_candidate_seconds``, a profiling interval timer
  raising inside it: CPU time, so a loaded machine does not fail a correct candidate),
  so an infinite Python loop fails that candidate only;
- writes nothing the harness reads: its output goes to a buffer, and each verdict is
  written to a private copy of stdout, one line per candidate.

A candidate that kills or stalls the whole process (``os._exit``, a loop inside one C
call that the timer cannot interrupt, a long sleep, memory exhaustion past the limit) ends the batch: the candidates
with a verdict keep it, the one that was running fails, and the rest run again in a new
sandbox call. Every candidate therefore gets a verdict, and none crashes the caller.

:func:`pass_at_k` is the unbiased estimator of Chen et al. (2021), "Evaluating Large
Language Models Trained on Code": with ``n`` samples of which ``c`` pass,
``pass@k = 1 - C(n - c, k) / C(n, k)``.
"""

from __future__ import annotations

import math
import secrets
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass

from anyformer.tasks.sandbox import SandboxLimits, run_python

#: Seconds each candidate may run (all its tests together) inside a batch.
PER_CANDIDATE_SECONDS = 1.0


@dataclass(frozen=True)
class Candidate:
    """A function's ``source`` with its ``tests`` (doctest examples: source, expected
    output) and the ``module`` whose globals it is defined over (None: none)."""

    source: str
    tests: tuple[tuple[str, str], ...]
    module: str | None = None


def pass_at_k(n: int, c: int, k: int) -> float:
    """Chen et al.'s unbiased pass@k from ``n`` samples with ``c`` correct:
    ``1 - C(n - c, k) / C(n, k)`` (1 when fewer than ``k`` samples fail)."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass_at_k needs 0 <= c <= n and 1 <= k <= n, got n={n} c={c} k={k}")
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


_HARNESS = textwrap.dedent(
    """
    import builtins, doctest, importlib, io, os, signal, sys
    MARK = %(mark)r
    OUT = os.fdopen(os.dup(1), "w")
    CASES = %(cases)r
    BUDGET = %(budget)r

    class _Late(BaseException):
        pass

    def _alarm(signum, frame):
        raise _Late()

    signal.signal(signal.SIGPROF, _alarm)
    BUILTINS = vars(builtins)
    SAVED = dict(BUILTINS)
    for index, (module, source, tests) in enumerate(CASES):
        marks = []
        sink = io.StringIO()
        sys.stdout = sys.stderr = sink
        try:
            signal.setitimer(signal.ITIMER_PROF, BUDGET)
            try:
                base = dict(vars(importlib.import_module(module))) if module else {}
                base["__builtins__"] = dict(vars(builtins))
                base.setdefault("__name__", "candidate")
                exec(compile(source, "<candidate>", "exec"), base)
                parser = doctest.DocTestParser()
                for i, (code, want) in enumerate(tests):
                    lines = code.rstrip("\\n").split("\\n")
                    text = ">>> " + "\\n... ".join(lines) + "\\n" + want
                    test = parser.get_doctest(text, dict(base), "t%%d" %% i, None, 0)
                    runner = doctest.DocTestRunner(verbose=False,
                                                   optionflags=doctest.ELLIPSIS)
                    runner.run(test, out=lambda s: None)
                    marks.append("0" if runner.failures else "1")
            finally:
                signal.setitimer(signal.ITIMER_PROF, 0)
        except BaseException:
            marks += ["0"] * (len(tests) - len(marks))
        finally:
            sys.stdout, sys.stderr = sys.__stdout__, sys.__stderr__
            BUILTINS.clear()
            BUILTINS.update(SAVED)
        OUT.write("%%s %%d %%s\\n" %% (MARK, index, "".join(marks) or "-"))
        OUT.flush()
    """
)


def _program(cases: Sequence[Candidate], mark: str, budget: float) -> str:
    rows = [(c.module, c.source, tuple(c.tests)) for c in cases]
    return _HARNESS % {"mark": mark, "cases": rows, "budget": budget}


def _verdicts(stdout: str, mark: str, cases: Sequence[Candidate]) -> dict[int, list[bool]]:
    out: dict[int, list[bool]] = {}
    for line in stdout.splitlines():
        parts = line.split(" ")
        if len(parts) != 3 or parts[0] != mark or not parts[1].isdigit():
            continue
        i = int(parts[1])
        if i < len(cases) and i not in out:
            flags = "" if parts[2] == "-" else parts[2]
            if len(flags) == len(cases[i].tests) and set(flags) <= {"0", "1"}:
                out[i] = [f == "1" for f in flags]
    return out


def run_candidates(
    cases: Sequence[Candidate],
    per_candidate_seconds: float = PER_CANDIDATE_SECONDS,
    limits: SandboxLimits | None = None,
) -> list[list[bool]]:
    """Pass/fail of every test of every candidate, run in the sandbox as few calls as
    possible (see the module docstring); a candidate that did not finish fails all its
    tests."""
    results: list[list[bool] | None] = [None] * len(cases)
    todo = list(range(len(cases)))
    while todo:
        batch = [cases[i] for i in todo]
        mark = "RESULT-" + secrets.token_hex(8)
        wall = 5.0 + per_candidate_seconds * 1.5 * len(batch)
        lim = limits or SandboxLimits(
            wall_seconds=wall, cpu_seconds=int(math.ceil(wall)) + 1, max_output_bytes=2**20
        )
        done = run_python(_program(batch, mark, per_candidate_seconds), lim)
        got = _verdicts(done.stdout, mark, batch)
        for j, flags in got.items():
            results[todo[j]] = flags
        # the first candidate without a verdict ended the batch: it fails; the rest rerun
        missing = [j for j in range(len(batch)) if j not in got]
        if not missing:
            break
        first = missing[0]
        results[todo[first]] = [False] * len(batch[first].tests)
        todo = [todo[j] for j in missing[1:]]
    return [r if r is not None else [] for r in results]


__all__ = ["PER_CANDIDATE_SECONDS", "Candidate", "pass_at_k", "run_candidates"]

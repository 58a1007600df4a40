"""``anyformer check``: run a slot's contract checks on one component, a user's included.

    report = anyformer.check("mypkg.attn:MyAttention", "attention")
    report.passed        # True when no check failed
    print(report.table())

A component is a class, ``"package.module:Class"`` or ``"path/to/file.py:Class"`` (the
file is imported as a module named after it; naming it is the consent to run it). It
must meet its slot's contract (:data:`anyformer.registry.CONTRACTS`: base class,
constructor, methods) or the check is refused with a :class:`SpecError` naming what is
missing. A class registered with ``@register`` is checked with its own name, parameters
and capabilities; an unregistered one as a spec would see it by path (its registered
parent's parameters and capabilities, else none and the defaults). The checks
themselves are :mod:`anyformer.lab.contracts`, the same ones the registry-generated
tests run on every built-in variant.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from anyformer import registry
from anyformer.errors import SpecError, did_you_mean
from anyformer.lab.contracts import Outcome, checks_for, run_check
from anyformer.registry import Entry

if TYPE_CHECKING:
    from rich.table import Table


@dataclass
class CheckReport:
    """The outcome of every contract check of ``slot`` on ``component``."""

    component: str
    slot: str
    name: str
    outcomes: list[Outcome] = field(default_factory=list)
    #: what the checks assumed about an unregistered class (its capabilities)
    note: str = ""

    @property
    def passed(self) -> bool:
        """No check failed (skipped checks do not concern the component)."""
        return not self.failed

    @property
    def failed(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.status == "failed"]

    def rows(self) -> list[tuple[str, str, str]]:
        """``(check, status, reason)`` per check, in order."""
        return [(o.check.name, o.status, o.reason) for o in self.outcomes]

    def rich_table(self) -> Table:
        """The report as a :class:`rich.table.Table`."""
        from rich.markup import escape
        from rich.table import Table

        verdict = "passed" if self.passed else f"{len(self.failed)} failed"
        table = Table(
            title=escape(f"{self.component} as {self.slot} '{self.name}': {verdict}"),
            caption=escape(self.note) or None,
        )
        table.add_column("check")
        table.add_column("result")
        table.add_column("reason", overflow="fold")
        colour = {"passed": "green", "failed": "bold red", "skipped": "dim"}
        for name, status, reason in self.rows():
            table.add_row(escape(name), f"[{colour[status]}]{status}[/]", escape(reason))
        return table

    def table(self, width: int = 110) -> str:
        """The report as plain text (a table without colours)."""
        import io

        from rich.console import Console

        out = io.StringIO()
        Console(file=out, width=width, no_color=True, highlight=False).print(self.rich_table())
        return out.getvalue()

    def __str__(self) -> str:
        return self.table()


def check_component(
    component: type | str,
    slot: str,
    *,
    allow_import: bool = True,
    progress: Callable[[Outcome], None] | None = None,
) -> CheckReport:
    """Run every contract check of ``slot`` on ``component`` (see the module docstring).

    ``allow_import=False`` refuses a path whose module is not imported yet. Raises
    :class:`SpecError` for an unknown slot, an unimportable path, or a class that breaks
    the slot's contract; a check that fails is in the report, not raised. ``progress``
    is called with each outcome as it comes."""
    if slot not in registry.CONTRACTS:
        raise SpecError(
            f"--slot '{slot}' is not a slot{did_you_mean(slot, registry.CONTRACTS)} "
            f"(valid slots: {', '.join(registry.CONTRACTS)})"
        )
    cls, label = _load(component, allow_import)
    problems = registry.contract_problems(slot, cls)
    if problems:
        raise SpecError(f"{label} cannot be a {slot}: {'; '.join(problems)}")
    checks = checks_for(slot)
    with _entry_for(cls, slot, label) as (entry, registered):
        report = CheckReport(label, slot, entry.name, note="" if registered else _note(entry))
        for check in checks:
            outcome = run_check(check, entry)
            report.outcomes.append(outcome)
            if progress is not None:
                progress(outcome)
    return report


def _load(component: type | str, allow_import: bool) -> tuple[type, str]:
    """The class named by ``component`` and how to call it in messages."""
    if isinstance(component, type):
        return component, f"{component.__module__}:{component.__qualname__}"
    if not isinstance(component, str) or ":" not in component:
        raise SpecError(
            f"component {component!r} must be a class, 'package.module:Class' or "
            f"'path/to/file.py:Class'"
        )
    where, _, attr = component.rpartition(":")
    if not where or not attr:
        raise SpecError(f"component '{component}' names no class after ':' (e.g. file.py:MyClass)")
    if where.endswith(".py") or "/" in where or "\\" in where:
        module = _import_file(Path(where), allow_import)
    else:
        module = _import_module(where, allow_import)
    cls = getattr(module, attr, None)
    if cls is None:
        found = [n for n, v in vars(module).items() if isinstance(v, type)]
        raise SpecError(
            f"'{where}' has no class '{attr}'{did_you_mean(attr, found)} "
            f"(classes there: {', '.join(sorted(found)) or 'none'})"
        )
    if not isinstance(cls, type):
        raise SpecError(f"'{component}' is a {type(cls).__name__}, not a class")
    return cls, component


def _import_module(name: str, allow_import: bool) -> object:
    if name in sys.modules:
        return sys.modules[name]
    if not allow_import:
        raise SpecError(f"module '{name}' is not imported and allow_import=False")
    try:
        return importlib.import_module(name)
    except Exception as exc:  # noqa: BLE001 - a user's module may fail in any way
        raise SpecError(
            f"module '{name}' could not be imported: {type(exc).__name__}: {exc}"
        ) from None


def _import_file(path: Path, allow_import: bool) -> object:
    """Import a Python file as the module named after it (once: the same file again
    gives the same module, so its classes register once)."""
    if not path.is_file():
        raise SpecError(f"file '{path}' does not exist")
    if path.suffix != ".py":
        raise SpecError(f"file '{path}' is not a Python file (.py)")
    name = path.stem
    if not name.isidentifier():
        raise SpecError(f"file '{path}': '{name}' is not a valid module name")
    loaded = sys.modules.get(name)
    if loaded is not None:
        if Path(getattr(loaded, "__file__", "") or "").resolve() == path.resolve():
            return loaded
        raise SpecError(
            f"file '{path}' would be imported as module '{name}', but a module of that name "
            f"is already loaded from {getattr(loaded, '__file__', 'elsewhere')}; rename the file"
        )
    if not allow_import:
        raise SpecError(f"file '{path}' is not imported and allow_import=False")
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)  # type: ignore[union-attr]
    except Exception as exc:  # noqa: BLE001 - a user's file may fail in any way
        del sys.modules[name]
        raise SpecError(
            f"file '{path}' could not be imported: {type(exc).__name__}: {exc}"
        ) from None
    return module


@contextmanager
def _entry_for(cls: type, slot: str, label: str) -> Iterator[tuple[Entry, bool]]:
    """The registry entry the checks build ``cls`` through, by a name a spec resolves, and
    whether ``cls`` was registered itself.

    A class registered with ``@register`` has its entry; one a dotted path reaches gets
    the entry a spec naming that path would; any other (e.g. defined inside a function)
    is registered for the duration of the check only."""
    entry = registry.entry_of(cls)
    if entry is not None and entry.cls is cls:
        if entry.slot != slot:
            raise SpecError(f"{label} is registered as a {entry.slot}, not a {slot}")
        # registered itself, unless an earlier lookup by path made this entry
        yield entry, ":" not in entry.name
        return
    path = f"{cls.__module__}:{cls.__qualname__}"
    if cls.__qualname__.isidentifier() and _reaches(cls):
        yield registry.get(slot, path), False
        return
    name = "checked_" + "".join(c if c.isalnum() else "_" for c in cls.__qualname__)
    parent = entry if entry is not None and entry.slot == slot else None
    registry.register(
        slot,
        name,
        paper=None,
        summary=cls.__doc__ or "",
        params=parent.params if parent else registry.NoParams,
        caps=parent.caps if parent else None,
    )(cls)
    try:
        yield registry.get(slot, name), False
    finally:
        registry._REGISTRY[slot].pop(name, None)
        registry._BY_CLASS.pop(cls, None)


def _note(entry: Entry) -> str:
    """The capabilities an unregistered class was checked with, and how to declare others."""
    caps = entry.caps
    flags = {"causal_safe": caps.causal_safe, "bidirectional": caps.bidirectional,
             "kv_cache": caps.kv_cache}  # fmt: skip
    said = ", ".join(("" if on else "no ") + name for name, on in flags.items())
    whose = "its registered parent's" if caps != registry.Capabilities() else "the defaults"
    return (
        f"not registered: checked with {said} ({whose}); "
        f"declare others with @register(..., caps=Capabilities(...))"
    )


def _reaches(cls: type) -> bool:
    """Whether ``module:Class`` (what a spec would name) leads back to ``cls``."""
    return getattr(sys.modules.get(cls.__module__), cls.__qualname__, None) is cls

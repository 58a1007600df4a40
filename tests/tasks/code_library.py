"""A small documented Python library for the code-task tests (written into a folder)."""

from __future__ import annotations

import textwrap
from pathlib import Path


def write_code_library(root: Path, modules: int = 24, per_module: int = 6) -> Path:
    """A small library: ``modules`` modules of documented functions and a test suite."""
    topics = ["parse", "render", "merge", "split", "encode", "decode", "sort", "count",
              "filter", "scale", "rotate", "flatten"]  # fmt: skip
    for m in range(modules):
        lines = []
        for f in range(per_module):
            topic = topics[(m * per_module + f) % len(topics)]
            name = f"{topic}_{m}_{f}"
            lines.append(
                textwrap.dedent(f'''
                def {name}(items, factor={f}):
                    """{topic.capitalize()} the items of group {m} with factor {f}.

                    Longer explanation that is not part of the query.
                    """
                    result = [x * factor for x in items]
                    for i in range({m + 2}):
                        result.append(i + {f})
                    return sorted(result)
            ''')
            )
        path = root / f"pkg{m % 4}" / f"mod{m}.py"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(lines))
    (root / "test").mkdir()
    (root / "test" / "test_x.py").write_text(
        "".join(
            f'def test_{i}():\n    """Check case {i} of the suite."""\n    assert {i} == {i}\n'
            for i in range(12)
        )  # fmt: skip
    )
    return root


TEMPLATES = [
    '''
    def total_{m}_{f}(items, start={f}):
        """Add up the items after a start value.

        >>> total_{m}_{f}([1, 2, 3], 0)
        6
        """
        acc = start
        for x in items:
            acc = acc + x
        return acc
    ''',
    '''
    def clip_{m}_{f}(value, low, high):
        """Clip a value into [low, high]."""
        if value < low:
            return low
        if value > high:
            return high
        return value
    ''',
    '''
    def window_{m}_{f}(seq, size={m}):
        """Every window of a sequence."""
        out = []
        for i in range(len(seq) - size + 1):
            out.append(seq[i:i + size])
        return out
    ''',
    '''
    def last_{m}_{f}(seq):
        """The last item or None."""
        n = len(seq)
        return seq[n - 1] if n > 0 else seq[0:2]
    ''',
]


def write_library(root: Path, modules: int = 12, per_module: int = 4) -> Path:
    """``modules`` modules of ``per_module`` small functions each (a class with a method
    in every third module) and a test suite ``test/test_x.py``."""
    for m in range(modules):
        parts = [
            textwrap.dedent(TEMPLATES[(m + f) % len(TEMPLATES)].format(m=m, f=f))
            for f in range(per_module)
        ]
        if m % 3 == 0:
            parts.append(
                f"\nclass Box{m}:\n    def scale(self, k):\n        w = self.w * k\n"
                f"        h = self.h * k\n        return w, h\n"
            )
        path = root / f"pkg{m % 3}" / f"mod{m}.py"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(parts))
    (root / "test").mkdir(exist_ok=True)
    (root / "test" / "test_x.py").write_text(
        "".join(
            f'def test_{i}(self):\n    """\n    >>> {i}\n    {i}\n    """\n    a = {i} + 1\n    b = a * 2\n    assert b == {2 * i + 2}\n'
            for i in range(10)
        )
    )
    return root


#: Tasks that read a code library (``root``); the registry tests give them a small one.
CODE_TASKS = ("defect_detection", "repair", "code_lm")


def code_tree(stdlib: Path) -> Path:
    """A small library (:func:`write_library`) beside the ``stdlib_tree`` fixture's
    folder, written once per test."""
    root = stdlib.parent / f"{stdlib.name}_code"
    return root if root.is_dir() else write_library(root)


#: Tasks that classify functions by name (``method_name``); they get :func:`names_tree`.
NAME_TASKS = ("method_name",)
_METHODS = [
    "    def __init__(self, value{i}):\n        self.value{i} = value{i}\n        self.count = {i}\n",
    "    def get_{w}(self):\n        return self._{w}{i}\n",
    "    def set_{w}(self, value):\n        self._{w}{i} = value\n",
    "    def is_{w}(self):\n        return self._{w}{i} is not None and self.get_{w}() > {i}\n",
]


def write_names_library(root: Path, modules: int = 12) -> Path:
    """``modules`` modules, each a class with ``__init__``, ``get_*``, ``set_*`` and
    ``is_*`` methods (and an ``is_*`` that calls itself), and a test suite of the same
    kinds of classes: the ``method_name`` tests' library."""
    words = ["size", "name", "mode", "path", "level", "owner"]
    for m in range(modules + 2):
        body = "".join(t.format(i=m, w=words[m % len(words)]) for t in _METHODS)
        body += f"    def is_ready(self, n):\n        return n <= 0 or self.is_ready(n - {m + 1})\n"
        folder = root / ("test" if m >= modules else f"pkg{m % 3}")
        folder.mkdir(parents=True, exist_ok=True)
        name = f"test_{m}.py" if m >= modules else f"mod{m}.py"
        (folder / name).write_text(f"class Thing{m}:\n{body}")
    return root


def names_tree(stdlib: Path) -> Path:
    """:func:`write_names_library` beside the ``stdlib_tree`` fixture's folder."""
    root = stdlib.parent / f"{stdlib.name}_names"
    return root if root.is_dir() else write_names_library(root)

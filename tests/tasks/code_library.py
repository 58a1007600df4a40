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

"""``python -m anyformer``: the command line, also what ``torchrun -m anyformer`` starts on
every process (e.g. ``torchrun --nproc_per_node=2 -m anyformer run quickstart
train.distributed=ddp``).

``python -m`` puts the working directory first on ``sys.path``, so a file ``mypkg.py``
next to a spec would be importable by a dotted path without anyone installing it. It is
removed before anything reads a spec: code is imported only from installed packages
(and ``PYTHONPATH``), and only when allowed (``--allow-import``, see
:func:`anyformer.registry.import_policy`)."""

import os
import sys


def _drop_working_directory() -> None:
    cwd = os.getcwd()
    keep = [os.path.realpath(p) for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    here = os.path.realpath(cwd)
    sys.path[:] = [
        p
        for p in sys.path
        if not (p in ("", ".") or os.path.realpath(p) == here) or os.path.realpath(p) in keep
    ]


_drop_working_directory()

from anyformer.cli import main  # noqa: E402

sys.exit(main())

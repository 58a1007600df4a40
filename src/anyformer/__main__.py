"""``python -m anyformer``: the command line, also what ``torchrun -m anyformer`` starts on
every process (e.g. ``torchrun --nproc_per_node=2 -m anyformer run quickstart
train.distributed=ddp``)."""

import sys

from anyformer.cli import main

sys.exit(main())

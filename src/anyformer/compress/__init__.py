"""Compression of trained runs: each a command over a run folder writing a new run
folder whose report compares it with its parent (``prune``: :mod:`.prune`; ``quantize``:
:mod:`.quantize`, post-training quantization with its int8/int4 layers in
:mod:`.qlinear`, activation statistics in :mod:`.stats` and SmoothQuant
re-parameterisation in :mod:`.smooth`)."""

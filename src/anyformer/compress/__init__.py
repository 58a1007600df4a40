"""Compression of trained runs: each a command over a run folder writing a new run
folder whose report compares it with its parent (``prune``: :mod:`.prune`)."""

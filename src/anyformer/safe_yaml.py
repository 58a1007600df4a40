"""Bounded YAML reading: a spec file cannot exhaust memory or time while it is parsed.

YAML's anchors and aliases (``&a`` / ``*a``) let a few hundred bytes describe a tree of
billions of nodes ("billion laughs"): PyYAML shares the aliased objects, so loading is
cheap, but anything that walks the result (validation, error messages, JSON copies)
expands it. :func:`load` therefore

- refuses input longer than :data:`MAX_BYTES`;
- counts alias nodes while composing and refuses more than :data:`MAX_ALIASES`;
- counts the nodes of the *expanded* tree (each alias counted at its full size) and
  refuses more than :data:`MAX_NODES`;
- uses the safe loader (plain data only: no Python objects).

Errors are :class:`~anyformer.errors.UserError` naming the source and the limit.
"""

from __future__ import annotations

from typing import Any

import yaml

from anyformer.errors import UserError

#: Longest YAML text read (a spec is a few kilobytes).
MAX_BYTES = 1_000_000
#: Most alias nodes (``*name``) in one document.
MAX_ALIASES = 64
#: Most nodes of the expanded document (every alias counted at its full size).
MAX_NODES = 100_000


class _BoundedLoader(yaml.SafeLoader):
    """The safe loader, counting alias nodes as it composes the document."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.aliases = 0

    def compose_node(self, parent: Any, index: Any) -> Any:  # noqa: D102
        if self.check_event(yaml.AliasEvent):
            self.aliases += 1
            if self.aliases > MAX_ALIASES:
                mark = self.peek_event().start_mark
                raise _TooLarge(
                    f"more than {MAX_ALIASES} aliases (*name) at line {mark.line + 1}; "
                    "anchors and aliases expand into large documents, write the values out"
                )
        return super().compose_node(parent, index)


class _TooLarge(Exception):
    pass


def _count_nodes(data: Any, limit: int) -> int:
    """The number of nodes of ``data`` with shared objects counted each time (stops past ``limit``)."""
    count = 0
    stack = [data]
    while stack:
        node = stack.pop()
        count += 1
        if count > limit:
            return count
        if isinstance(node, dict):
            stack.extend(node.keys())
            stack.extend(node.values())
        elif isinstance(node, list | tuple | set):
            stack.extend(node)
    return count


def load(text: str | bytes, source: str) -> Any:
    """Parse one YAML document from ``text`` within the limits above.

    ``source`` names the input in messages (a file name, ``--vary``, an override). Raises
    :class:`UserError` for invalid YAML or input beyond a limit."""
    if isinstance(text, bytes):
        if len(text) > MAX_BYTES:
            raise UserError(f"{source} is {len(text):,} bytes; at most {MAX_BYTES:,} are read")
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise UserError(f"{source} is not UTF-8 text (byte {exc.start})") from None
    if len(text.encode("utf-8", "surrogatepass")) > MAX_BYTES:
        raise UserError(f"{source} is longer than {MAX_BYTES:,} bytes, the most that is read")
    if "\x00" in text:
        raise UserError(f"{source} contains a NUL character")
    try:
        loader = _BoundedLoader(text)  # the reader refuses control characters here
    except yaml.YAMLError as exc:
        raise UserError(f"{source} is not valid YAML: {exc}") from None
    try:
        data = loader.get_single_data()
    except _TooLarge as exc:
        raise UserError(f"{source}: {exc}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise UserError(f"{source} is not valid YAML{where}: {problem}") from None
    except RecursionError:
        raise UserError(f"{source} is nested too deeply") from None
    finally:
        loader.dispose()
    if _count_nodes(data, MAX_NODES) > MAX_NODES:
        raise UserError(
            f"{source} expands to more than {MAX_NODES:,} values (through anchors and "
            "aliases); write the values out"
        )
    return data

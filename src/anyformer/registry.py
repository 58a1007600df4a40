"""The registry: every variant of every slot, with its paper, parameters and capabilities.

A slot is a place in the machine that has interchangeable variants (``attention``,
``position``, ``norm``, ``ffn``, ``task``, ``objective``, ...). A variant is a class
registered under a name::

    @register("attention", "softmax", paper=Paper("Attention Is All You Need", 2017),
              summary="scaled dot-product attention", params=SoftmaxParams,
              caps=Capabilities(complexity="O(n^2)"))
    class SoftmaxAttention(nn.Module): ...

``anyformer list``, the README tables, spec validation and the registry-wide tests are
all generated from these entries. A user's own class joins the same way, from their
code, or by a dotted path ``"package.module:ClassName"`` in a spec.

Built-in variants live in higher layers, in the modules named by
:data:`BUILTIN_MODULES`: ``anyformer.components``, ``anyformer.tasks``,
``anyformer.objectives``, ``anyformer.model.depth`` (the ``depth`` slot) and
``anyformer.lab.findings`` (the ``finding`` slot). The registry imports those modules
lazily, by name, the first time a slot is looked up. That discovery step is the only
place a layer-0 module names a higher layer, and it does so as data, like a plugin
entry point.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict

from anyformer.errors import SpecError, did_you_mean

T = TypeVar("T")

#: Modules whose import registers the built-in variants.
BUILTIN_MODULES = (
    "anyformer.components",
    "anyformer.tasks",
    "anyformer.objectives",
    "anyformer.model.depth",
    "anyformer.lab.findings",
)

#: The slots anyformer knows, in the order ``anyformer list`` shows them.
SLOTS: dict[str, str] = {
    "attention": "token mixers built on attention (and attention-free mixers)",
    "position": "positional schemes: add to embeddings, rotate q/k, or bias scores",
    "norm": "normalisation layers",
    "ffn": "channel mixers (feed-forward networks)",
    "layout": "residual layouts: where norms sit and how mixer and FFN combine",
    "depth": "depth schedules: which of the distinct blocks run, how often and in what order",
    "task": "data generators with ID/OOD splits, metrics and baselines",
    "objective": "losses",
    "finding": "published claims with the experiment that tests them and a check",
}


@dataclass(frozen=True)
class Dims:
    """Sizes and flags every component is built with, besides its own parameters.

    ``layer`` is the block's index (0-based) and ``n_layers`` the depth of the stack."""

    d_model: int
    n_heads: int
    max_len: int
    causal: bool
    dropout: float = 0.0
    bias: bool = True
    layer: int = 0
    n_layers: int = 1

    @property
    def d_head(self) -> int:
        return self.d_model // self.n_heads


class NoParams(BaseModel):
    """Parameter schema of a variant that takes no parameters."""

    model_config = ConfigDict(extra="forbid", frozen=True)


@dataclass(frozen=True)
class Paper:
    """The publication a variant implements."""

    title: str
    year: int
    authors: str = ""

    def __str__(self) -> str:
        who = f"{self.authors}, " if self.authors else ""
        return f"{who}{self.title} ({self.year})"


PositionMode = Literal["none", "embed", "rotary", "bias"]


@dataclass(frozen=True)
class Capabilities:
    """What a variant can do; validation and generated tests read these.

    - ``causal_safe``: usable in a causal decoder (no output depends on later inputs).
    - ``bidirectional``: usable in an encoder.
    - ``kv_cache``: supports incremental decoding with a cache.
    - ``recurrent``: has a constant-memory recurrent step form.
    - ``complexity``: cost in sequence length n, e.g. ``"O(n^2)"``.
    - ``position_modes``: (mixers) the ways a positional scheme may act on it.
    - ``position_mode``: (positions) the way this scheme acts.
    - ``max_len``: longest sequence the variant accepts, if limited.
    """

    causal_safe: bool = True
    bidirectional: bool = True
    kv_cache: bool = False
    recurrent: bool = False
    complexity: str = ""
    position_modes: tuple[str, ...] = ("none", "embed", "rotary", "bias")
    position_mode: PositionMode | None = None
    max_len: int | None = None


@dataclass(frozen=True)
class Entry:
    """One registered variant."""

    slot: str
    name: str
    cls: type
    paper: Paper | None
    summary: str
    params: type[BaseModel]
    caps: Capabilities = field(default_factory=Capabilities)

    def check(self, params: BaseModel, dims: Dims) -> str | None:
        """Ask the class whether ``params`` fit ``dims``; ``None`` when they do."""
        check = getattr(self.cls, "check_dims", None)
        return check(params, dims) if check is not None else None

    def build(self, params: BaseModel, dims: Dims) -> Any:
        """Instantiate the variant."""
        return self.cls(dims, params)

    def make_params(self, values: dict[str, Any] | None = None, where: str = "") -> BaseModel:
        """Validate ``values`` against this variant's parameter schema."""
        values = dict(values or {})
        fields = self.params.model_fields
        for key in values:
            if key not in fields:
                valid = ", ".join(fields) or "none"
                raise SpecError(
                    f"{where + ': ' if where else ''}'{self.name}' has no parameter '{key}'"
                    f"{did_you_mean(key, fields)} (valid parameters: {valid})"
                )
        from pydantic import ValidationError

        try:
            return self.params(**values)
        except ValidationError as exc:
            err = exc.errors()[0]
            loc = ".".join(str(p) for p in err["loc"])
            prefix = f"{where}." if where else ""
            msg = str(err["ctx"]["error"]) if err["type"] == "value_error" else err["msg"]
            raise SpecError(f"{prefix}{loc}={err.get('input')!r}: {msg}") from None


_REGISTRY: dict[str, dict[str, Entry]] = {slot: {} for slot in SLOTS}
_loaded = False


def _load_builtins() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    for module in BUILTIN_MODULES:
        importlib.import_module(module)


def register(
    slot: str,
    name: str,
    *,
    paper: Paper | None,
    summary: str,
    params: type[BaseModel] = NoParams,
    caps: Capabilities | None = None,
) -> Callable[[type[T]], type[T]]:
    """Class decorator: register ``cls`` as variant ``name`` of ``slot``."""

    def decorate(cls: type[T]) -> type[T]:
        table = _REGISTRY.setdefault(slot, {})
        if name in table and table[name].cls is not cls:
            raise ValueError(f"{slot} '{name}' is already registered by {table[name].cls}")
        entry = Entry(slot, name, cls, paper, summary, params, caps or Capabilities())
        table[name] = entry
        cls.registry_entry = entry  # type: ignore[attr-defined]
        return cls

    return decorate


def slots() -> list[str]:
    """Names of every slot with at least one variant."""
    _load_builtins()
    return [s for s, table in _REGISTRY.items() if table]


def components(slot: str) -> list[str]:
    """Names of the variants registered in ``slot``, sorted."""
    _load_builtins()
    if slot not in _REGISTRY:
        raise SpecError(
            f"unknown slot '{slot}'{did_you_mean(slot, _REGISTRY)} "
            f"(valid slots: {', '.join(_REGISTRY)})"
        )
    return sorted(_REGISTRY[slot])


def entries(slot: str) -> list[Entry]:
    """The entries of ``slot`` sorted by name."""
    return [_REGISTRY[slot][n] for n in components(slot)]


def get(slot: str, name: str, where: str | None = None) -> Entry:
    """Look up a variant; a dotted path ``pkg.mod:Class`` imports a user's class.

    Raises :class:`SpecError` naming the field (``where``), the bad value and the
    valid names.
    """
    _load_builtins()
    if ":" in name:
        return _from_path(slot, name, where)
    table = _REGISTRY.get(slot)
    if table is None:
        raise SpecError(f"unknown slot '{slot}' (valid slots: {', '.join(_REGISTRY)})")
    if name not in table:
        field = f"{where}=" if where else ""
        raise SpecError(
            f"{field}'{name}' is not a registered {slot}{did_you_mean(name, table)} "
            f"(valid: {', '.join(sorted(table))})"
        )
    return table[name]


def _from_path(slot: str, path: str, where: str | None) -> Entry:
    where = where or slot
    module_name, _, attr = path.partition(":")
    try:
        module = importlib.import_module(module_name)
        cls = getattr(module, attr)
    except (ImportError, AttributeError) as exc:
        raise SpecError(f"{where}='{path}' could not be imported: {exc}") from None
    entry = getattr(cls, "registry_entry", None)
    if entry is None:
        return Entry(slot, path, cls, None, cls.__doc__ or "", NoParams, Capabilities())
    if entry.slot != slot:
        raise SpecError(f"{where}='{path}' is registered as a {entry.slot}, not a {slot}")
    return entry


def markdown_tables() -> str:
    """One markdown table per slot, generated from the entries (used by the README)."""
    _load_builtins()
    out: list[str] = []
    for slot in slots():
        mixer = slot == "attention"
        out += [f"### {slot}", "", SLOTS.get(slot, "").capitalize() + ".", ""]
        head = ["name", "summary", "paper"] + (
            ["cost", "causal", "encoder", "recurrent"] if mixer else []
        )
        out += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for entry in entries(slot):
            row = [
                f"`{entry.name}`",
                entry.summary.replace("|", "\\|"),
                str(entry.paper) if entry.paper else "—",
            ]
            if mixer:
                c = entry.caps
                row += [
                    c.complexity,
                    *("yes" if f else "no" for f in (c.causal_safe, c.bidirectional, c.recurrent)),
                ]
            out.append("| " + " | ".join(row) + " |")
        out.append("")
    return "\n".join(out).rstrip() + "\n"

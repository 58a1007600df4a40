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

Every slot has a contract (:data:`CONTRACTS`): the base class its variants subclass,
the constructor arguments :meth:`Entry.build` passes, the methods a variant must
define, and the built-in modules that register its variants. :func:`register` refuses
a class that breaks its slot's contract. Built-in variants live in higher layers; the
registry imports a slot's modules lazily, by name, the first time that slot is looked
up (so building a model never imports tasks, training or the lab). That discovery step
is the only place a layer-0 module names a higher layer, and it does so as data, like
a plugin entry point.
"""

from __future__ import annotations

import importlib
import inspect
import re
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field, replace
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict

from anyformer.errors import SpecError, did_you_mean

T = TypeVar("T")


@dataclass(frozen=True)
class SlotContract:
    """What every variant of a slot is and provides; :func:`register` checks it.

    - ``description``: one line for ``anyformer list``.
    - ``modules``: the built-in modules whose import registers the slot's variants;
      they are imported the first time the slot is looked up, and only for that slot.
    - ``base``: ``"module:Class"`` of the class every variant subclasses.
    - ``args``: the constructor's arguments, in order; :meth:`Entry.build` passes them
      (``params`` is the variant's validated parameter record).
    - ``methods``: what a variant must define itself (not inherit from ``base``).
    """

    description: str
    modules: tuple[str, ...]
    base: str
    args: tuple[str, ...]
    methods: tuple[str, ...] = ()


_MODULE = "torch.nn:Module"

#: The slots anyformer knows, in the order ``anyformer list`` shows them, with their
#: contracts. The modules are named as data: this is the only place layer 0 names a
#: higher layer, like a plugin entry point.
CONTRACTS: dict[str, SlotContract] = {
    "embedder": SlotContract(
        "embedders: turn token ids, vectors, images or table rows into token vectors",
        ("anyformer.components.embedders",),
        "anyformer.components.embedders.base:Embedder",
        ("spec", "params"),
        ("forward",),
    ),
    "attention": SlotContract(
        "token mixers built on attention (and attention-free mixers)",
        ("anyformer.components.attention", "anyformer.components.mixers"),
        _MODULE,
        ("dims", "params"),
        ("forward",),
    ),
    "position": SlotContract(
        "positional schemes: add to embeddings, rotate q/k, or bias scores",
        ("anyformer.components.position", "anyformer.components.position_2d"),
        "anyformer.components.base:PositionScheme",
        ("dims", "params"),
    ),
    "norm": SlotContract(
        "normalisation layers",
        ("anyformer.components.norm", "anyformer.components.norm_extra"),
        _MODULE,
        ("dims", "params"),
        ("forward",),
    ),
    "ffn": SlotContract(
        "channel mixers (feed-forward networks)",
        (
            "anyformer.components.ffn",
            "anyformer.components.ffn_extra",
            "anyformer.components.ffn_matformer",
        ),
        _MODULE,
        ("dims", "params"),
        ("forward",),
    ),
    "layout": SlotContract(
        "residual layouts: where norms sit and how mixer and FFN combine",
        ("anyformer.components.layout",),
        _MODULE,
        ("dims", "params", "parts"),
        ("forward",),
    ),
    "head": SlotContract(
        "heads: turn the final hidden states into outputs (logits, values, distributions)",
        ("anyformer.components.heads",),
        "anyformer.components.heads.base:Head",
        ("spec", "params"),
        ("forward",),
    ),
    "depth": SlotContract(
        "depth schedules: which of the distinct blocks run, how often and in what order",
        ("anyformer.model.depth",),
        "anyformer.model.depth:DepthSchedule",
        ("spec", "params"),
    ),
    "task": SlotContract(
        "data generators with ID/OOD splits, metrics and baselines",
        ("anyformer.tasks",),
        "anyformer.tasks.base:Task",
        ("params", "seed"),
        ("train_batch", "make_eval_set", "score", "max_seq_len"),
    ),
    "objective": SlotContract(
        "losses",
        ("anyformer.objectives",),
        "anyformer.objectives.losses:Objective",
        ("params",),
        ("loss",),
    ),
    "finding": SlotContract(
        "published claims with the experiment that tests them and a check",
        ("anyformer.lab.findings",),
        "anyformer.lab.findings.base:Finding",
        (),
        ("comparisons", "check"),
    ),
}

#: Slot name -> description (``anyformer list``).
SLOTS: dict[str, str] = {slot: c.description for slot, c in CONTRACTS.items()}


@dataclass(frozen=True)
class Dims:
    """Sizes and flags every component is built with, besides its own parameters.

    ``layer`` is the block's index (0-based) and ``n_layers`` the depth of the stack.
    ``grid`` is ``(H, W)`` when the embedder lays tokens out on a 2-D grid (image
    patches): tokens ``0 .. n_prefix - 1`` are prefix tokens (CLS, registers), token
    ``n_prefix + r * W + c`` is grid cell ``(r, c)``; ``None`` for 1-D sequences.
    ``branches`` is the length of each branch when the embedder lays out several
    branches one after another, each starting with its CLS token (CrossViT's two patch
    sizes); ``None`` for one sequence."""

    d_model: int
    n_heads: int
    max_len: int
    causal: bool
    dropout: float = 0.0
    bias: bool = True
    layer: int = 0
    n_layers: int = 1
    grid: tuple[int, int] | None = None
    n_prefix: int = 0
    branches: tuple[int, ...] | None = None
    #: the width of one head when a layer keeps fewer heads than ``d_model / d_head``
    #: (``layers.N.n_heads``); ``None``: ``d_model // n_heads``
    head_dim: int | None = None

    @property
    def d_head(self) -> int:
        return self.head_dim if self.head_dim is not None else self.d_model // self.n_heads


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
    - ``packing``: (mixers) honours the block-diagonal document mask of packed rows
      (``ctx.segments``); (depth schedules) keeps packed documents apart.
    - ``empty``: (FFNs) computes nothing; residual layouts skip it and its norm.
    - ``final_norm``: (layouts) the model applies a final norm after the last block.
    - ``input_kind``: (embedders) what the embedder reads: ``tokens``, ``vectors``,
      ``image``, ``table``, ``audio`` (waveforms ``[B, n_samples]``) or ``series``
      (``[B, lookback, variates]``).
    - ``grid``: (embedders) lays tokens out on a 2-D grid; (mixers, positions) needs one.
    - ``pooled``: (heads) one output per example, pooled over the tokens.
    - ``prefix``: (mixers) honours ``ctx.prefix_len`` (a prefix LM: bidirectional over
      each row's prefix, causal after it), with and without a cache.
    - ``memory``: (mixers) attends from the tokens to ``ctx.memory``, an encoder's
      output (cross-attention): it serves as ``model.cross_attention`` of an
      encoder–decoder, never as a layer's self-attention mixer.
    - ``cross``: (layouts) places a cross-attention sublayer between the mixer and the
      FFN when the block belongs to an encoder–decoder's decoder.
    - ``branches``: (embedders) lays tokens out as several branches, each starting with
      its CLS token (``TokenLayout.branches``); (mixers) needs such a layout.
    - ``graph``: (embedders) makes one token per graph node, the batch carrying the
      graphs' adjacency (``Context.adjacency``); (mixers) reads that adjacency, so it
      needs such an embedder.

    Every capability has this one default; a variant states what differs from it.
    """

    causal_safe: bool = True
    bidirectional: bool = True
    kv_cache: bool = False
    recurrent: bool = False
    complexity: str = ""
    position_modes: tuple[str, ...] = ("none", "embed", "rotary", "bias")
    position_mode: PositionMode | None = None
    max_len: int | None = None
    packing: bool = False
    empty: bool = False
    final_norm: bool = True
    input_kind: str | None = None
    grid: bool = False
    pooled: bool = False
    prefix: bool = False
    memory: bool = False
    cross: bool = False
    branches: bool = False
    graph: bool = False


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

    def build(self, params: BaseModel | None = None, *args: Any, **context: Any) -> Any:
        """Instantiate the variant with the slot's constructor arguments.

        After ``params`` come the slot's other arguments (see :data:`CONTRACTS`), by
        position or by name: ``dims`` for mixers, positions, norms and FFNs, ``dims`` and
        ``parts`` for layouts, ``spec`` for depth schedules, ``seed`` for tasks, nothing
        for objectives and findings. A missing or unknown one is a programming error and
        raises ``TypeError``. ``params`` defaults to the variant's defaults."""
        contract = CONTRACTS.get(self.slot)
        params = self.make_params() if params is None else params
        if contract is None:  # a slot added at run time without a contract
            return self.cls(params, *args, **context)
        names = [a for a in contract.args if a != "params"]
        if len(args) > len(names):
            raise TypeError(f"building {self.slot} '{self.name}' takes {names}, got {args!r}")
        values = {"params": params, **dict(zip(names, args)), **context}
        missing = [a for a in contract.args if a not in values]
        extra = sorted(set(values) - set(contract.args) - {"params"})
        if missing or extra:
            raise TypeError(
                f"building {self.slot} '{self.name}' needs "
                f"{', '.join(contract.args) or 'nothing'} (missing: {', '.join(missing) or 'none'}"
                f"; unexpected: {', '.join(extra) or 'none'})"
            )
        return self.cls(*(values[a] for a in contract.args))

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
#: The entry of every registered class (exactly that class, not its subclasses).
_BY_CLASS: dict[type, Entry] = {}
_loaded: set[str] = set()


def _load_builtins(slot: str | None = None) -> None:
    """Import the built-in modules of ``slot`` (of every slot when ``None``), once."""
    for name in CONTRACTS if slot is None else [slot]:
        if name in _loaded or name not in CONTRACTS:
            continue
        _loaded.add(name)
        for module in CONTRACTS[name].modules:
            importlib.import_module(module)


def _resolve(path: str) -> Any:
    module, _, attr = path.partition(":")
    return getattr(importlib.import_module(module), attr)


def contract_problems(slot: str, cls: Any) -> list[str]:
    """What keeps ``cls`` from being a variant of ``slot`` (empty when nothing does)."""
    contract = CONTRACTS.get(slot)
    if contract is None:
        return []
    if not isinstance(cls, type):
        return [f"it is a {type(cls).__name__}, not a class"]
    base = _resolve(contract.base)
    if not issubclass(cls, base):
        return [f"it does not subclass {base.__module__}.{base.__qualname__}"]
    problems = []
    for method in contract.methods:
        if not callable(getattr(cls, method, None)) or getattr(cls, method) is getattr(
            base, method, None
        ):
            problems.append(f"it does not define {method}()")
    try:
        inspect.signature(cls).bind(*contract.args)
    except (TypeError, ValueError):
        args = ", ".join(contract.args) or "no arguments"
        problems.append(f"its constructor does not take ({args})")
    return problems


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
        problems = contract_problems(slot, cls)
        if problems:
            raise TypeError(
                f"{cls.__module__}.{cls.__qualname__} cannot be registered as {slot} "
                f"'{name}': {'; '.join(problems)}"
            )
        entry = Entry(slot, name, cls, paper, summary, params, caps or Capabilities())
        table[name] = entry
        _BY_CLASS[cls] = entry
        return cls

    return decorate


def slots() -> list[str]:
    """Names of every slot with at least one variant."""
    _load_builtins()
    return [s for s, table in _REGISTRY.items() if table]


def components(slot: str) -> list[str]:
    """Names of the variants registered in ``slot``, sorted."""
    _load_builtins(slot)
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
    _load_builtins(slot)
    if ":" in name:
        return _from_path(slot, name, where)
    table = _REGISTRY.get(slot)
    if table is None:
        raise SpecError(f"unknown slot '{slot}' (valid slots: {', '.join(_REGISTRY)})")
    if name not in table and _load_entry_point_plugins():
        table = _REGISTRY[slot]
    if name not in table:
        field = f"{where}=" if where else ""
        raise SpecError(
            f"{field}'{name}' is not a registered {slot}{did_you_mean(name, table)} "
            f"(valid: {', '.join(sorted(table))})"
        )
    return table[name]


def entry_of(cls: type) -> Entry | None:
    """The entry of ``cls`` or of its nearest registered base class (``None`` if none).

    Instances of an unregistered subclass (a user's extension, a class swapped in while
    decoding) thus report their parent's name and capabilities."""
    for klass in cls.__mro__:
        entry = _BY_CLASS.get(klass)
        if entry is not None:
            return entry
    return None


def capabilities(obj: Any) -> Capabilities:
    """The capabilities of a component instance or class (the defaults when unregistered)."""
    entry = entry_of(obj if isinstance(obj, type) else type(obj))
    return entry.caps if entry is not None else Capabilities()


#: Modules a spec may name by path under the current import policy; ``None`` (the
#: Python API's default): any module. See :func:`import_policy`.
_ALLOWED: ContextVar[frozenset[str] | None] = ContextVar("anyformer_imports", default=None)
#: The entry point group through which installed packages declare their plugins.
PLUGIN_GROUP = "anyformer.plugins"


@contextmanager
def import_policy(allowed: Iterable[str] | None) -> Iterator[None]:
    """Within the block, a dotted path in a spec may import only ``allowed`` modules (and
    their submodules), those of :func:`plugin_modules` and anyformer's own;
    ``None`` allows every module.

    The command line runs every command under ``import_policy(--allow-import ...)``: a
    spec someone sends you runs no code you did not allow. From Python (your own
    program, which already runs code of your choice) the default allows every path."""
    token = _ALLOWED.set(None if allowed is None else frozenset(allowed))
    try:
        yield
    finally:
        _ALLOWED.reset(token)


def restricted() -> bool:
    """Whether an import policy restricts the modules a spec may import."""
    return _ALLOWED.get() is not None


def plugin_modules() -> frozenset[str]:
    """Modules installed packages declare in the ``anyformer.plugins`` entry point group."""
    from importlib.metadata import entry_points

    try:
        found = entry_points(group=PLUGIN_GROUP)
    except Exception:  # a broken distribution's metadata must not stop validation
        return frozenset()
    return frozenset(ep.value.partition(":")[0].strip() for ep in found)


def import_allowed(module: str) -> bool:
    """Whether a spec may import ``module`` under the current policy."""
    allowed = _ALLOWED.get()
    if allowed is None:
        return True
    granted = allowed | plugin_modules() | {"anyformer"}
    parts = module.split(".")
    return any(".".join(parts[:i]) in granted for i in range(1, len(parts) + 1))


def import_refusal(module: str, where: str, value: str) -> str:
    """The message for a module the import policy does not allow."""
    top = module.split(".")[0] or module
    return (
        f"{where}='{value}' would import module '{module}', and anyformer imports code "
        f"named in a spec only when you allow it: pass --allow-import {top} (it is recorded "
        f"in the run's spec under plugins), or install it as a plugin (entry point group "
        f"'{PLUGIN_GROUP}')"
    )


def load_plugin(module: str, where: str = "plugins") -> None:
    """Import plugin ``module`` (which registers its variants), if the policy allows it."""
    if not import_allowed(module):
        raise SpecError(import_refusal(module, where, module))
    try:
        importlib.import_module(module)
    except ImportError as exc:
        raise SpecError(f"{where}: module '{module}' could not be imported: {exc}") from None


_plugins_loaded = False


def _load_entry_point_plugins() -> bool:
    """Import the installed plugins (entry point group ``anyformer.plugins``) once;
    ``True`` when this call imported any."""
    global _plugins_loaded
    if _plugins_loaded:
        return False
    _plugins_loaded = True
    modules = sorted(plugin_modules())
    for module in modules:
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise SpecError(
                f"plugin '{module}' ({PLUGIN_GROUP}) could not be imported: {exc}"
            ) from None
    return bool(modules)


def _from_path(slot: str, path: str, where: str | None) -> Entry:
    where = where or slot
    module_name, _, attr = path.partition(":")
    if not _DOTTED.fullmatch(module_name) or not _DOTTED.fullmatch(attr):
        raise SpecError(
            f"{where}='{path}' is not a dotted path 'package.module:ClassName' "
            f"(nor a registered {slot})"
        )
    if not import_allowed(module_name):
        raise SpecError(import_refusal(module_name, where, path))
    try:
        module = importlib.import_module(module_name)
        cls = module
        for part in attr.split("."):
            cls = getattr(cls, part)
    except (ImportError, AttributeError) as exc:
        raise SpecError(f"{where}='{path}' could not be imported: {exc}") from None
    entry = _BY_CLASS.get(cls) if isinstance(cls, type) else None
    if entry is not None:
        if entry.slot != slot:
            raise SpecError(f"{where}='{path}' is registered as a {entry.slot}, not a {slot}")
        return entry
    problems = contract_problems(slot, cls)
    if problems:
        raise SpecError(f"{where}='{path}' is not a {slot}: {'; '.join(problems)}")
    # An unregistered class: it keeps the parameters and capabilities of the nearest
    # registered ancestor of the same slot, under its own path.
    parent = entry_of(cls)
    if parent is not None and parent.slot == slot:
        entry = replace(parent, name=path, cls=cls, summary=cls.__doc__ or parent.summary)
    else:
        entry = Entry(slot, path, cls, None, cls.__doc__ or "", NoParams, Capabilities())
    _BY_CLASS[cls] = entry
    return entry


_DOTTED = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")


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

"""Checks of command-line arguments that the spec schema does not see (layer 6).

Each raises :class:`~anyformer.errors.UserError` (exit status 2) naming the option, the
bad value and what is valid, before any work starts: ``compare --lrs/--vary``,
``extract --widths``, ``generate --eos/--top-k/...`` and YAML values of overrides.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from anyformer import safe_yaml
from anyformer.errors import SpecError, UserError

#: Most tokens ``generate`` adds to a prompt.
MAX_NEW_TOKENS = 1_000_000
#: Sampling temperatures other than 0 (greedy) lie in this range: logits / 1e-300 overflow.
MIN_TEMPERATURE = 1e-3
MAX_TEMPERATURE = 1e3


def positive_int(option: str) -> Callable[[str], int]:
    """An argparse ``type`` accepting integers >= 1 (argparse exits 2 with the message)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{option} takes a whole number, got {text!r}"
            ) from None
        if value < 1:
            raise argparse.ArgumentTypeError(f"{option} must be at least 1, got {value}")
        return value

    parse.__name__ = "positive integer"
    return parse


def _yaml_problem(value: str, where: str) -> None:
    """Refuse a flow-style YAML value (``{...}`` or ``[...]``) that does not parse."""
    if value.strip().startswith(("{", "[")):
        try:
            safe_yaml.load(value, where)
        except UserError as exc:
            raise UserError(f"{exc} (value {value!r})") from None


def check_warmup(spec: Any, overrides: Sequence[str]) -> None:
    """Refuse ``train.warmup_steps`` longer than ``train.steps`` (the learning rate would
    never reach ``train.lr``), unless only ``train.steps`` was shortened on the command
    line (a smoke run of an experiment whose warmup is longer is what was asked for)."""
    train = spec.train
    if train.warmup_steps <= train.steps:
        return
    keys = {item.partition("=")[0].strip() for item in overrides}
    if "train.steps" in keys and "train.warmup_steps" not in keys:
        return
    raise SpecError(
        f"train.warmup_steps={train.warmup_steps} is more than train.steps={train.steps}: "
        f"the learning rate would never reach train.lr; set train.warmup_steps to at most "
        f"{train.steps}"
    )


def check_override_values(overrides: Sequence[str]) -> None:
    """An override's mapping or list value must be valid YAML (not a dotted path error)."""
    for item in overrides:
        key, _, value = item.partition("=")
        _yaml_problem(value, f"override {key}")


def check_axes(texts: Sequence[str], axes: Sequence[tuple[str, list[str]]], base: Any) -> None:
    """Each ``--vary`` value parses, no key is varied twice, and no two values of an axis
    give the same spec (``softmax`` and ``{name: softmax}`` are one variant)."""
    from anyformer.lab.compare import _joint

    seen: dict[str, str] = {}
    for text, (key, values) in zip(texts, axes, strict=True):
        for part in key.split(","):
            if part in seen:
                raise UserError(
                    f"--vary '{text}': {part} is already varied by --vary '{seen[part]}'; "
                    "give each key one axis"
                )
            seen[part] = text
        specs: dict[str, str] = {}
        for value in values:
            _yaml_problem(value, f"--vary {key}")
            overrides = [f"{k}={v}" for k, v in _joint(key, value)]
            check_override_values(overrides)
            try:
                digest = base.with_overrides(overrides).hash
            except UserError as exc:
                raise type(exc)(f"--vary '{text}': the value {value!r}: {exc}") from None
            if digest in specs:
                raise UserError(
                    f"--vary '{text}': the value {value!r} gives the same spec as "
                    f"{specs[digest]!r} (a value given twice); each variant must differ"
                )
            specs[digest] = value


def parse_lrs(text: str) -> list[float]:
    """``--lrs 1e-3,3e-3`` -> floats; each finite, in (0, 10], none repeated."""
    from anyformer.spec_limits import MAX_LR

    out: list[float] = []
    for part in text.split(","):
        try:
            lr = float(part)
        except ValueError:
            raise UserError(
                f"--lrs {text!r}: {part.strip()!r} is not a number (e.g. --lrs 1e-3,3e-3)"
            ) from None
        if not (math.isfinite(lr) and 0 < lr <= MAX_LR):
            raise UserError(
                f"--lrs {text!r}: learning rate {part.strip()} must be in (0, {MAX_LR:g}]"
            )
        if lr in out:
            raise UserError(f"--lrs {text!r}: {part.strip()} is given twice")
        out.append(lr)
    return out


def trained_widths(spec: Any) -> list[tuple[float, ...]]:
    """The MatFormer granularities of every distinct block of a run's model."""
    out = []
    for i in range(spec.model.n_layers):
        ffn = spec.model.layer(i).ffn
        if "widths" in ffn.params:
            out.append(tuple(float(w) for w in ffn.params["widths"]))
    return out


def check_widths(run_dir: str | Path, widths: Sequence[float]) -> None:
    """``extract --widths``: fractions in (0, 1] the run trained, one or one per block."""
    for w in widths:
        if not (math.isfinite(w) and 0 < w <= 1):
            raise UserError(f"--widths {w:g}: a width is a fraction of the FFN in (0, 1]")
    from anyformer.lab.run import load_run_spec

    spec = load_run_spec(run_dir)
    trained = trained_widths(spec)
    if not trained:  # extract_run refuses it, once the checkpoint is checked
        return
    if len(widths) not in (1, spec.model.n_layers):
        raise UserError(
            f"--widths takes one width or one per distinct block ({spec.model.n_layers}), "
            f"got {len(widths)}"
        )
    for i, w in enumerate(widths):
        grains = trained[min(i, len(trained) - 1)]
        if not any(math.isclose(w, g, rel_tol=1e-9, abs_tol=1e-9) for g in grains):
            raise UserError(
                f"--widths {w:g} is not a width the run trained (its widths: "
                f"{', '.join(f'{g:g}' for g in grains)})"
            )


def check_resolved(spec: Any) -> Any:
    """Resolve ``spec`` against its task (as a run does) and check what only the
    resolved spec can say: that the objective reads the head the task decided."""
    from anyformer.lab.run import resolve
    from anyformer.spec import objective_problem

    resolved = resolve(spec)
    problem = objective_problem(resolved, resolved=True)
    if problem:
        raise SpecError(problem)
    return resolved


def check_generate_args(args: argparse.Namespace, vocab_size: int | None = None) -> None:
    """``generate``'s sampling options; with the model's vocabulary, ``--eos`` too."""
    if not 0 <= args.max_new_tokens <= MAX_NEW_TOKENS:
        raise UserError(f"--max-new-tokens {args.max_new_tokens} must be in 0..{MAX_NEW_TOKENS}")
    t = args.temperature
    if not (math.isfinite(t) and (t == 0 or MIN_TEMPERATURE <= t <= MAX_TEMPERATURE)):
        raise UserError(
            f"--temperature {t:g} must be 0 (greedy) or in [{MIN_TEMPERATURE:g}, "
            f"{MAX_TEMPERATURE:g}] (smaller values overflow the logits: use 0)"
        )
    if args.top_k is not None and args.top_k < 1:
        raise UserError(f"--top-k {args.top_k} must be at least 1")
    if args.top_p is not None and not (0 < args.top_p <= 1):
        raise UserError(f"--top-p {args.top_p} must be in (0, 1]")
    if args.eos is not None:
        if args.eos < 0:
            raise UserError(f"--eos {args.eos} is not a token id (ids are >= 0)")
        if vocab_size is not None and args.eos >= vocab_size:
            raise UserError(
                f"--eos {args.eos} is outside the model's vocabulary (token ids 0..{vocab_size - 1})"
            )

"""Reading and writing specs: YAML files, command-line overrides, atomic writes and
readable validation errors (re-exported by :mod:`anyformer.spec`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import (
    BaseModel,
    ValidationError,
)

from anyformer import safe_yaml
from anyformer.errors import SpecError, UserError, did_you_mean


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` so that readers see the old or the new file, never half."""
    import os
    import tempfile

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping, bounded (:mod:`anyformer.safe_yaml`); errors name the file
    and the line. An empty file is refused (it would silently train the defaults)."""
    path = Path(path)
    try:
        size = path.stat().st_size
        if size > safe_yaml.MAX_BYTES:
            raise UserError(
                f"spec file '{path}' is {size:,} bytes; at most {safe_yaml.MAX_BYTES:,} are read"
            )
        text = path.read_bytes()
    except OSError as exc:
        raise UserError(f"cannot read spec file '{path}': {exc.strerror}") from None
    data = safe_yaml.load(text, f"'{path}'")
    if data is None:
        raise UserError(
            f"'{path}' is empty: a spec file holds a mapping of spec fields (name, model, "
            "task, objective, train)"
        )
    if not isinstance(data, dict):
        raise UserError(f"'{path}' must hold a mapping of spec fields, not {type(data).__name__}")
    return data


def parse_value(text: str) -> Any:
    """Parse a command-line value as a YAML scalar/flow value (``500``, ``true``, ``[1,2]``);
    text that is not valid YAML stays a string (the schema then says what is wrong)."""
    if text == "":
        return ""
    try:
        return safe_yaml.load(text, "value")
    except UserError:
        return text


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``a.b.c=value`` overrides to a nested dict (a copy is returned)."""
    out = json.loads(json.dumps(data))
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise UserError(
                f"override '{item}' is not of the form KEY=VALUE (e.g. train.steps=500)"
            )
        node = out
        parts = key.split(".")
        for i, part in enumerate(parts[:-1]):
            child = node.get(part)
            if isinstance(child, str):  # a component given by name: expand to a mapping
                child = {"name": child}
            elif child is None:
                child = {}
            elif not isinstance(child, dict):
                where = ".".join(parts[: i + 1])
                raise UserError(f"override '{item}': '{where}' is a value, not a section")
            node[part] = child
            node = child
        node[parts[-1]] = parse_value(raw)
    return out


def _fields_at(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str] | None:
    """Field names of the (sub)model found at ``loc`` inside ``model``."""
    import typing

    current: Any = model
    skip = False  # the next part is a key of a dict or an index of a list
    for part in loc:
        if skip:
            skip = False
            continue
        if not (isinstance(current, type) and issubclass(current, BaseModel)):
            return None
        field = current.model_fields.get(str(part))
        if field is None:
            return None
        origins = {
            typing.get_origin(a) for a in (field.annotation, *typing.get_args(field.annotation))
        }
        skip = bool(origins & {dict, list})
        current = _model_in(field.annotation)
    if isinstance(current, type) and issubclass(current, BaseModel):
        return list(current.model_fields)
    return None


def _model_in(annotation: Any) -> Any:
    import typing

    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _model_in(arg)
        if found is not None:
            return found
    return None


def format_validation_error(model: type[BaseModel], exc: ValidationError) -> str:
    """Render pydantic errors as ``field=value: what is wrong`` lines."""
    lines = []
    for err in exc.errors():
        loc = tuple(p for p in err["loc"] if not str(p).startswith("function-"))
        field = ".".join(str(p) for p in loc)
        if err["type"] == "extra_forbidden":
            valid = _fields_at(model, loc[:-1]) or []
            lines.append(
                f"{field}: unknown key{did_you_mean(str(loc[-1]), valid)} "
                f"(valid keys: {', '.join(valid)})"
            )
            continue
        msg = err["msg"].removeprefix("Value error, ").removeprefix("Assertion failed, ")
        if err["type"] in ("value_error", "assertion_error"):
            lines.append(f"{field}: {msg}" if field else msg)
        else:
            lines.append(f"{field}={err.get('input')!r}: {msg}")
    return "\n".join(lines)


def parse(model: type[BaseModel], data: dict[str, Any]) -> Any:
    """Validate ``data`` as ``model``; errors become one readable :class:`SpecError`."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise SpecError(format_validation_error(model, exc)) from None

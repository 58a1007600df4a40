"""References to registered variants in specs: a name, or a name with the variant's own
parameters, validated against the registry (re-exported by :mod:`anyformer.spec`)."""

from __future__ import annotations

import json
from typing import Any, ClassVar

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializationInfo,
    model_serializer,
    model_validator,
)

from anyformer import registry
from anyformer import spec_limits as limits
from anyformer.errors import SpecError


class _Frozen(BaseModel):
    # numbers must be finite: lr=.inf or init_std=.nan are refused with the field
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


# --------------------------------------------------------------------------- references
class Ref(_Frozen):
    """A reference to a registered variant and its parameters.

    Written as a bare name (``rope``) or a mapping with ``name`` and the variant's
    own parameters (``{name: softmax, kv_heads: 2}``). After validation ``params``
    holds every parameter of the variant, defaults filled in.
    """

    slot: ClassVar[str] = ""
    name: str
    params: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _from_short_form(cls, data: Any) -> Any:
        if isinstance(data, str):
            return {"name": data, "params": {}}
        if isinstance(data, dict) and "params" not in data:
            if "name" not in data:
                raise ValueError(
                    f"a {cls.slot} is a name or a mapping with a 'name' key, got {data!r}"
                )
            rest = {k: v for k, v in data.items() if k != "name"}
            return {"name": data["name"], "params": rest}
        return data

    @model_validator(mode="after")
    def _against_registry(self) -> Ref:
        try:
            entry = registry.get(self.slot, self.name)
            resolved = entry.make_params(self.params)
        except SpecError as exc:  # pydantic reports plain ValueErrors with their location
            raise ValueError(str(exc)) from None
        params = resolved.model_dump(mode="json")
        limit = limits.MAX_TASK_INT if self.slot == "task" else limits.MAX_PARAM_INT
        for key, value in params.items():
            problem = limits.param_problem(value, key, limit)
            if problem:
                raise ValueError(f"'{self.name}': {problem}")
        object.__setattr__(self, "params", params)
        return self

    @model_serializer(mode="plain")
    def _serialize(self, info: SerializationInfo) -> Any:
        params = self.params
        if info.context and info.context.get("canonical"):
            defaults = _param_defaults(self)
            params = {k: v for k, v in params.items() if k not in defaults or defaults[k] != v}
        return {"name": self.name, **params} if params else self.name

    @property
    def entry(self) -> registry.Entry:
        return registry.get(self.slot, self.name)

    @property
    def config(self) -> BaseModel:
        """The validated parameter object of the variant."""
        return self.entry.params(**self.params)


def _param_defaults(ref: Ref) -> dict[str, Any]:
    """The JSON form of each defaulted parameter of ``ref``'s variant."""
    fields = ref.entry.params.model_fields
    defaults = {}
    for key, info in fields.items():
        if not info.is_required():
            value = info.get_default(call_default_factory=True)
            defaults[key] = value.model_dump(mode="json") if isinstance(value, BaseModel) else value
    return json.loads(json.dumps(defaults, default=str))


class AttentionRef(Ref):
    slot: ClassVar[str] = "attention"


class PositionRef(Ref):
    slot: ClassVar[str] = "position"


class NormRef(Ref):
    slot: ClassVar[str] = "norm"


class FFNRef(Ref):
    slot: ClassVar[str] = "ffn"


class LayoutRef(Ref):
    slot: ClassVar[str] = "layout"


class DepthRef(Ref):
    slot: ClassVar[str] = "depth"


class TaskRef(Ref):
    slot: ClassVar[str] = "task"


class ObjectiveRef(Ref):
    slot: ClassVar[str] = "objective"


class EmbedderRef(Ref):
    slot: ClassVar[str] = "embedder"


class HeadRef(Ref):
    slot: ClassVar[str] = "head"

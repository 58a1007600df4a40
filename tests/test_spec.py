"""Specs: YAML round-trip, stable hash, dotted overrides, and errors that name the field."""

from __future__ import annotations

from pathlib import Path

import pytest

from anyformer.errors import SpecError, UserError
from anyformer.spec import ExperimentSpec, ModelSpec, apply_overrides, load_yaml, parse


def _spec() -> ExperimentSpec:
    return ExperimentSpec.from_dict(
        {
            "name": "t",
            "model": {
                "d_model": 64,
                "attention": {"name": "softmax", "kv_heads": 2},
                "position": {"name": "t5_bias", "n_buckets": 16},
                "ffn": {"name": "glu", "variant": "geglu"},
            },
            "train": {"steps": 7, "betas": [0.9, 0.95]},
        }
    )


def test_yaml_round_trip_is_exact(tmp_path: Path) -> None:
    spec = _spec()
    path = tmp_path / "s.yaml"
    spec.save(path)
    again = ExperimentSpec.from_yaml(path)
    assert again == spec
    assert again.to_yaml() == spec.to_yaml()
    assert again.hash == spec.hash


def test_hash_is_stable_and_content_addressed() -> None:
    assert _spec().hash == _spec().hash
    assert _spec().with_overrides(["train.steps=8"]).hash != _spec().hash
    # a component given by name or by a mapping with default params is the same spec
    a = ExperimentSpec.from_dict({"model": {"position": "rope"}})
    b = ExperimentSpec.from_dict({"model": {"position": {"name": "rope"}}})
    assert a.hash == b.hash
    # defaults written out (fields or component parameters) do not change it, so a field
    # added later with a default keeps the names of earlier run folders
    c = ExperimentSpec.from_dict(
        {"model": {"position": {"name": "rope", "base": 10000.0}}, "train": {"packing": False}}
    )
    assert c.hash == a.hash
    assert a.with_overrides(["model.position={name: rope, base: 500}"]).hash != a.hash
    assert a.with_overrides(["train.progress=false", "description=notes"]).hash == a.hash
    assert (
        a.with_overrides(["model.depth={name: looped, loops: 4}"]).hash
        != a.with_overrides(["model.depth={name: looped, loops: 4, loss_window: 2}"]).hash
    )


def test_overrides_coerce_types() -> None:
    spec = _spec().with_overrides(
        [
            "model.position=alibi",
            "train.lr=3e-4",
            "model.n_layers=3",
            "train.progress=false",
            "model.attention.kv_heads=1",
        ]
    )
    assert spec.model.position.name == "alibi"
    assert spec.train.lr == pytest.approx(3e-4)
    assert spec.model.n_layers == 3 and spec.train.progress is False
    assert spec.model.attention.config.kv_heads == 1


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({"model": {"d_modle": 64}}, ["model.d_modle", "d_model"]),
        ({"model": {"attention": "sofmax"}}, ["sofmax", "softmax"]),
        ({"model": {"d_model": 100, "n_heads": 3}}, ["d_model=100", "n_heads=3", "99"]),
        ({"model": {"n_layers": 0}}, ["model.n_layers", "0", "greater than 0"]),
        ({"train": {"steps": -5}}, ["train.steps", "-5"]),
        ({"model": {"position": {"name": "rope", "bse": 3}}}, ["bse", "base"]),
        ({"model": {"kind": "decodr"}}, ["model.kind", "decoder", "encoder"]),
    ],
)
def test_bad_specs_name_field_value_and_valid_choices(data: dict, expected: list[str]) -> None:
    with pytest.raises(SpecError) as info:
        ExperimentSpec.from_dict(data)
    for fragment in expected:
        assert fragment in str(info.value), str(info.value)


def test_unknown_component_lists_valid_ones() -> None:
    with pytest.raises(SpecError) as info:
        parse(ModelSpec, {"norm": "groupnorm"})
    assert "layernorm" in str(info.value) and "rmsnorm" in str(info.value)


def test_bad_yaml_gives_the_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("name: x\nmodel:\n  d_model: [1, 2\n  n_layers: 2\n")
    with pytest.raises(UserError) as info:
        load_yaml(path)
    assert "line" in str(info.value)


def test_override_syntax_errors() -> None:
    with pytest.raises(UserError, match="KEY=VALUE|key=value|="):
        apply_overrides({}, ["train.steps"])

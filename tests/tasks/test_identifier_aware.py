"""identifier_aware (CodeT5's pretraining mixture) and starting an encoder from an
encoder–decoder run: ``tasks: [span]`` is span_corruption batch for batch, every batch
is one of the three objectives, a tagging batch's loss is the tagger's cross-entropy over
the encoder's output, evaluation is span corruption's, and an encoder fine-tuned from an
encoder–decoder parent starts from exactly the parent's ``encoder.*`` weights."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from code_library import write_library

from anyformer import registry
from anyformer.errors import SpecError
from anyformer.lab.init_from import backbone_state, check_init_from, read_parent
from anyformer.lab.run import prepare_model, resolve, run_experiment, start_from_parent
from anyformer.model.transformer import build_model
from anyformer.objectives.identifiers import CHOSEN, IDENTIFIER_AWARE_TASKS, IdentifierAware
from anyformer.objectives.losses import attach_objective
from anyformer.spec import ExperimentSpec, ModelSpec
from anyformer.tasks.base import Batch
from anyformer.training.checkpoint import read_weights

MODEL = {"d_model": 16, "n_heads": 2, "n_layers": 1, "max_len": 48, "vocab_size": 256}


def code_batch(root: Path) -> Batch:
    entry = registry.get("task", "code_lm")
    params = entry.make_params({"root": str(root), "val_fraction": 0.3, "seq_len": 48})
    return entry.build(params, 0).train_batch(0, 4)


def objective(name: str, **params: object) -> object:
    entry = registry.get("objective", name)
    spec = ModelSpec(kind="encoder_decoder", **MODEL)
    return entry.build(entry.make_params(params)).for_model(spec)


def test_span_alone_is_span_corruption(tmp_path: Path) -> None:
    batch = code_batch(write_library(tmp_path))
    mixed, span = objective("identifier_aware", tasks=["span"]), objective("span_corruption")
    a = mixed.corrupt(batch, torch.Generator().manual_seed(3))
    b = span.corrupt(batch, torch.Generator().manual_seed(3))
    for field in ("inputs", "targets", "loss_mask", "padding_mask"):
        assert torch.equal(getattr(a, field), getattr(b, field)), field
    assert torch.equal(a.extras["source"], b.extras["source"])
    assert a.extras[CHOSEN].tolist() == [0] * 4
    # evaluation is span corruption's, whatever the mixture
    full = objective("identifier_aware")
    (e1,), (e2,) = full.evaluation_batches([batch], "id"), span.evaluation_batches([batch], "id")
    assert torch.equal(e1.extras["source"], e2.extras["source"])
    assert torch.equal(e1.targets, e2.targets)


def test_each_batch_is_one_objective_and_its_loss(tmp_path: Path) -> None:
    torch.manual_seed(0)
    batch = code_batch(write_library(tmp_path))
    obj = objective("identifier_aware")
    assert isinstance(obj, IdentifierAware)
    model = build_model(ModelSpec(kind="encoder_decoder", **MODEL))
    attach_objective(model, obj)
    assert isinstance(model.objective_module, torch.nn.Linear)

    def forward(b: Batch) -> list[tuple[float, torch.Tensor]]:
        kwargs = {"padding_mask": b.padding_mask, "source": b.extras["source"],
                  "source_mask": b.extras["source_mask"]}  # fmt: skip
        return [(1.0, model(b.inputs, **kwargs))]

    seen = {}
    for seed in range(12):
        out = obj.corrupt(batch, torch.Generator().manual_seed(seed))
        seen.setdefault(IDENTIFIER_AWARE_TASKS[int(out.extras[CHOSEN][0])], out)
    assert set(seen) == set(IDENTIFIER_AWARE_TASKS)
    tag = seen["tagging"]
    real = batch.padding_mask
    assert torch.equal(tag.extras["source"], batch.inputs)
    logits = model.objective_module(model.encode(batch.inputs, real))
    want = F.cross_entropy(logits[real], batch.extras["identifier"][real].long())
    got = obj.training_loss(model, tag, 0, forward)
    assert float(got.detach()) == pytest.approx(float(want.detach()), rel=1e-6)
    got.backward()  # the tagger and the encoder learn, the decoder's blocks do not
    assert model.objective_module.weight.grad is not None
    assert all(p.grad is not None for p in model.encoder.blocks.parameters())
    assert all(p.grad is None for n, p in model.named_parameters() if n.startswith("blocks."))
    for name in ("span", "identifier"):  # decoder batches: the target's cross-entropy
        b = seen[name]
        ((_, out),) = forward(b)
        loss = obj.training_loss(model, b, 0, forward).detach()
        assert float(loss) == pytest.approx(float(obj.loss(out, b).detach()), rel=1e-6)
    assert seen["identifier"].targets.shape != seen["span"].targets.shape or not torch.equal(
        seen["identifier"].targets, seen["span"].targets
    )


def test_tagging_needs_the_identifier_marks(tmp_path: Path) -> None:
    batch = code_batch(write_library(tmp_path))
    plain = Batch(batch.inputs, batch.targets, batch.loss_mask, batch.padding_mask)
    obj = objective("identifier_aware", tasks=["tagging"])
    with pytest.raises(SpecError, match="identifier"):
        obj.corrupt(plain, torch.Generator())


def test_an_encoder_starts_from_an_encoder_decoder_parents_encoder(tmp_path: Path) -> None:
    root = write_library(tmp_path / "lib")
    train = {"steps": 3, "batch_size": 4, "eval_every": 3, "eval_size": 4,
             "checkpoint_every": 3, "progress": False, "warmup_steps": 1, "threads": 1}  # fmt: skip
    pretrain = ExperimentSpec.from_dict({
        "name": "pre", "model": {**MODEL, "kind": "encoder_decoder"},
        "task": {"name": "code_lm", "root": str(root), "val_fraction": 0.3, "seq_len": 48},
        "objective": {"name": "identifier_aware"}, "train": train,
    })  # fmt: skip
    folder = run_experiment(pretrain, out=tmp_path / "runs").dir
    task = {"name": "code_search", "tokenizer": "bytes", "root": str(root), "val_fraction": 0.3,
            "code_len": 48, "query_len": 16, "min_query_chars": 8}  # fmt: skip
    child = {"name": "child", "model": {**MODEL, "kind": "encoder"}, "task": task,
             "objective": {"name": "info_nce"}, "train": train, "init_from": str(folder)}  # fmt: skip
    spec = resolve(ExperimentSpec.from_dict(child))
    assert check_init_from(spec) is not None
    model = prepare_model(spec)
    start_from_parent(spec, model, tmp_path / "child")
    parent = read_parent(folder)
    mine = backbone_state(model)
    theirs = read_weights(parent.checkpoint, {f"encoder.{k}": v for k, v in mine.items()})
    assert {k.split(".", 1)[0] for k in mine} == {"embed", "blocks", "norm"}
    for name, tensor in mine.items():
        assert torch.equal(tensor, theirs[f"encoder.{name}"]), name
    # another backbone is refused, naming the field against the parent's encoder
    child["model"] = {**MODEL, "kind": "encoder", "d_model": 32}
    with pytest.raises(SpecError, match="model.d_model: 16 in the parent run, 32 now"):
        check_init_from(resolve(ExperimentSpec.from_dict(child)))

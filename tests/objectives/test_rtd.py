"""rtd (ELECTRA): masking and sampling per step, tokens the generator reproduced count as
original, the discriminator's loss never reaches the generator, both parts learn."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from anyformer.lab.run import build_objective, build_task, prepare_model, resolve
from anyformer.objectives.losses import CORRUPT_TRAIN, attach_objective
from anyformer.objectives.rtd import MASK, RTD, UNIFORM, RTDParams, choose_masked, sample
from anyformer.spec import ExperimentSpec
from anyformer.tasks.base import Batch, torch_generator
from anyformer.training.trainer import Trainer

TASK = {"name": "copy", "min_len": 4, "max_len": 8, "ood_min_len": 9, "ood_max_len": 10}


def spec(steps: int = 4, **model: object) -> ExperimentSpec:
    return resolve(
        ExperimentSpec.from_dict(
            {
                "name": "rtd", "task": TASK, "objective": "rtd",
                "model": {"kind": "encoder", "d_model": 32, "n_layers": 2, "n_heads": 4,
                          "max_len": 32, **model},
                "train": {"steps": steps, "batch_size": 32, "lr": 2e-3, "eval_every": steps,
                          "eval_size": 64, "warmup_steps": 20, "threads": 1,
                          "progress": False, "log_every": 50},
            }
        )
    )  # fmt: skip


def setup(**model: object) -> tuple[nn.Module, RTD, Batch]:
    s = spec(**model)
    task = build_task(s)
    net, objective = prepare_model(s), build_objective(s, task)
    attach_objective(net, objective)
    batch = objective.corrupt(task.train_batch(0, 8), torch_generator(0, CORRUPT_TRAIN, 0))
    return net, objective, batch


def test_the_objective_decides_the_discriminator_head() -> None:
    s = spec()
    assert (s.model.head.name, s.model.n_outputs) == ("token_classify", 2)
    s = spec(head="token_regress")
    assert (s.model.head.name, s.model.n_outputs) == ("token_regress", 1)
    net = prepare_model(s)
    generator = RTD(RTDParams()).module(net)
    # a quarter as wide (1 of 4 heads, head size kept), one more id for [MASK]
    assert generator.spec.d_model == 8 and generator.spec.vocab_size == s.model.vocab_size + 1


def test_masks_and_samples_are_drawn_per_step() -> None:
    real = torch.ones(4, 20, dtype=torch.bool)
    real[1, 10:] = False
    m = choose_masked(real, 0.15, torch.Generator().manual_seed(0))
    assert m.sum(1).tolist() == [3, 2, 3, 3] and not (m & ~real).any()
    again = choose_masked(real, 0.15, torch.Generator().manual_seed(0))
    assert torch.equal(m, again)
    # inverse-CDF sampling: u in a token's CDF interval picks it
    logits = torch.log(torch.tensor([[0.2, 0.5, 0.3]]))
    u = torch.tensor([0.1, 0.3, 0.69, 0.71, 0.99])
    assert sample(logits.expand(5, 3), u, 1.0).tolist() == [0, 1, 1, 2, 2]


class Constant(nn.Module):
    """A stand-in generator that predicts ``ids`` (or one fixed token) everywhere."""

    def __init__(self, ids: torch.Tensor | None, vocab: int, token: int = 0) -> None:
        super().__init__()
        self.ids, self.vocab, self.token = ids, vocab, token

    def forward(self, x: torch.Tensor, padding_mask: torch.Tensor | None) -> torch.Tensor:
        ids = self.ids if self.ids is not None else torch.full_like(x, self.token)
        return 50.0 * nn.functional.one_hot(ids, self.vocab + 1).float()


def test_tokens_the_generator_reproduced_count_as_original() -> None:
    net, objective, batch = setup()
    vocab = net.spec.vocab_size
    net.objective_module = Constant(batch.inputs, vocab)  # always right
    _, corrupted, replaced, _ = objective.parts(net, batch)
    assert torch.equal(corrupted, batch.inputs) and not replaced.any()
    token = int(batch.inputs[batch.extras[MASK]][0])  # right at some masked positions only
    net.objective_module = Constant(None, vocab, token)
    _, corrupted, replaced, real = objective.parts(net, batch)
    mask = batch.extras[MASK]
    assert torch.equal(replaced, mask & (batch.inputs != token))
    assert (mask & ~replaced).any() and replaced.any()
    assert torch.equal(corrupted[~mask], batch.inputs[~mask])


def test_the_discriminator_loss_does_not_reach_the_generator() -> None:
    net, objective, batch = setup()
    mlm, corrupted, replaced, real = objective.parts(net, batch)
    disc = objective.detection_loss(net(corrupted, batch.padding_mask), replaced, real)
    disc.backward(retain_graph=True)
    generator = list(net.objective_module.parameters())
    assert all(p.grad is None for p in generator)
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in net.blocks.parameters())
    net.zero_grad(set_to_none=True)
    mlm.backward()
    assert all(p.grad is None for p in net.blocks.parameters())  # mlm trains the generator
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in generator)


def test_evaluation_loss_is_the_objective_on_fixed_batches() -> None:
    net, objective, batch = setup()
    net.eval()
    batches = objective.evaluation_batches([batch], "id")
    assert torch.equal(
        batches[0].extras[UNIFORM], objective.evaluation_batches([batch], "id")[0].extras[UNIFORM]
    )
    with torch.no_grad():
        a = objective(net(batch.inputs, batch.padding_mask), batch)
        mlm, corrupted, replaced, real = objective.parts(net, batch)
        d = objective.detection_loss(net(corrupted, batch.padding_mask), replaced, real)
    assert float(a) == pytest.approx(float(mlm + 50 * d))
    assert batch.targets.abs().sum() == 0  # the task scores "original" on clean inputs


@pytest.mark.slow
def test_generator_and_discriminator_both_learn() -> None:
    s = resolve(
        ExperimentSpec.from_dict(
            {
                "name": "rtd", "task": {"name": "stdlib_lm", "seq_len": 32}, "objective": "rtd",
                "model": {"kind": "encoder", "d_model": 32, "n_layers": 2, "n_heads": 4,
                          "max_len": 32},
                "train": {"steps": 300, "batch_size": 32, "lr": 3e-3, "eval_every": 300,
                          "eval_size": 64, "warmup_steps": 20, "threads": 1,
                          "progress": False, "log_every": 50},
            }
        )
    )  # fmt: skip
    task = build_task(s)
    t = Trainer(prepare_model(s), task, build_objective(s, task), s.train)
    t.fit()
    net, objective = t.model.eval(), t.objective
    mlm_sum = disc_sum = rate = 0.0
    batches = objective.evaluation_batches(task.eval_set("id", 64), "id")
    with torch.no_grad():
        for b in batches:
            mlm, corrupted, replaced, real = objective.parts(net, b)
            mlm_sum += float(mlm)
            out = net(corrupted, b.padding_mask)
            disc_sum += float(objective.detection_loss(out, replaced, real))
            rate += float(replaced[real].float().mean())
    n = len(batches)
    mlm, disc, p = mlm_sum / n, disc_sum / n, rate / n
    counts = sum(
        torch.bincount(task.train_batch(i, 32).inputs.flatten(), minlength=256) for i in range(20)
    )
    q = counts[counts > 0] / counts.sum()
    unigram = float(-(q * q.log()).sum())
    trivial_disc = -(p * math.log(p) + (1 - p) * math.log(1 - p))  # the replaced rate alone
    # measured: mlm 3.22 (uniform 5.55, unigram 3.20); detection 0.325 vs 0.408 (p = 0.14)
    print(f"mlm {mlm:.3f} (uniform {math.log(256):.3f}, unigram {unigram:.3f}); "
          f"detection {disc:.3f} vs {trivial_disc:.3f} (p={p:.3f})")  # fmt: skip
    assert mlm < 0.7 * math.log(256) and mlm < 1.05 * unigram
    assert disc < 0.9 * trivial_disc

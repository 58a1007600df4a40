"""Speed and quality of a structurally pruned model against its parent, in one process.

A decoder is trained on ``copy`` (``anyformer.train``), then ``anyformer prune`` removes
25% of its attention heads (Michel et al. 2019 importance) and 50% of its FFN neurons
(Taylor importance, Molchanov et al. 2017), once without recovery and once with
``--recover-steps``; unstructured magnitude pruning of the same number of weights is the
masked comparison (sparsity, no smaller matrices). Reported per model: parameters, the
task's headline metric on every split (the parent's evaluation sets, from each run's
``prune.json``) and its drop against the parent, and speed measured with
:func:`anyformer.training.cost.interleaved_speed` (a warm-up round, then rounds in which
every model runs ``--steps`` steps in turn, the order rotated every round): inference
(a forward without gradients) and training (forward, backward and AdamW) tokens/s on one
fixed batch, and the ratio pruned / parent (median of per-round ratios, with their
spread). ``--threads`` threads (default 1); the machine's load average is recorded.

    python benchmarks/prune_speed.py            # prints a table, writes results/
    python benchmarks/prune_speed.py --quick    # a smoke run (tiny model, 1 round)
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from anyformer.training.throughput import benchmark_environment, save_benchmark

RESULTS = Path(__file__).resolve().parent / "results"

FULL = {
    "model": {"d_model": 256, "n_layers": 4, "n_heads": 8, "max_len": 64,
              "ffn": {"name": "mlp", "mult": 4.0}},
    "task": {"name": "copy", "min_len": 1, "max_len": 12, "ood_min_len": 13,
             "ood_max_len": 20, "n_symbols": 26},
    "train": {"steps": 400, "batch_size": 32, "lr": 0.002, "warmup_steps": 40,
              "eval_every": 400, "eval_size": 256, "checkpoint_every": 400, "log_every": 50,
              "progress": False, "threads": 1},
    "batch": (32, 64), "recover": 100,
}  # fmt: skip
QUICK = {
    "model": {"d_model": 32, "n_layers": 2, "n_heads": 4, "max_len": 32},
    "task": {"name": "copy", "min_len": 1, "max_len": 5, "ood_min_len": 6, "ood_max_len": 8,
             "n_symbols": 8},
    "train": {"steps": 10, "batch_size": 8, "lr": 0.003, "warmup_steps": 1, "eval_every": 10,
              "eval_size": 16, "checkpoint_every": 10, "log_every": 5, "progress": False},
    "batch": (4, 16), "recover": 2,
}  # fmt: skip


def steppers(model: nn.Module, batch: tuple[int, int], vocab: int) -> dict[str, Callable]:
    """An inference step (forward, no gradients) and a training step (AdamW) of ``model``
    on one fixed batch of random tokens."""
    from anyformer.spec import TrainSpec
    from anyformer.training.trainer import make_optimizer

    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, vocab, batch, generator=g)
    train_model = model
    opt = make_optimizer(train_model, TrainSpec(lr=1e-4))

    def infer(_: int) -> tuple[int, float]:
        model.eval()
        with torch.inference_mode():
            model(x)
        return x.numel(), 0.0

    def train(_: int) -> tuple[int, float]:
        model.train()
        loss = F.cross_entropy(model(x).flatten(0, 1), x.flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return x.numel(), 0.0

    return {"inference": infer, "training": train}


def speed(models: dict[str, nn.Module], batch: tuple[int, int], vocab: int, rounds: int,
          steps: int) -> dict[str, Any]:  # fmt: skip
    """tokens/s of each model per mode, interleaved, and each one's ratio to ``parent``."""
    from anyformer.training.cost import interleaved_speed

    out: dict[str, Any] = {}
    for mode in ("inference", "training"):
        run = {name: steppers(m, batch, vocab)[mode] for name, m in models.items()}
        speeds = interleaved_speed(run, rounds, steps)
        per_round = {k: v["rounds_tokens_per_s"] for k, v in speeds.items()}
        result: dict[str, Any] = {
            "tokens_per_s": {k: statistics.median(v) for k, v in per_round.items()},
            "rounds_tokens_per_s": per_round,
        }
        for name in models:
            if name == "parent":
                continue
            ratios = [a / b for a, b in zip(per_round[name], per_round["parent"], strict=True)]
            result[f"ratio_{name}_vs_parent"] = statistics.median(ratios)
            result[f"ratio_{name}_spread"] = [min(ratios), max(ratios)]
        out[mode] = result
    return out


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=5, help="timed steps per round")
    parser.add_argument("--rounds", type=int, default=12, help="rounded up to a multiple of 4")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--heads", type=float, default=0.25)
    parser.add_argument("--ffn", type=float, default=0.5)
    parser.add_argument("--quick", action="store_true", help="tiny model, one round (smoke test)")
    parser.add_argument("--no-save", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    setup = QUICK if args.quick else FULL
    if args.quick:
        args.steps, args.rounds = 1, 1
    import anyformer
    from anyformer.compress.prune import prune_run
    from anyformer.lab.elastic import load_trained

    with tempfile.TemporaryDirectory() as tmp:
        spec = anyformer.ExperimentSpec.from_dict(
            {"name": "prune_speed", **{k: setup[k] for k in ("model", "task", "train")}}
        )
        parent = anyformer.train(spec, out=tmp).dir
        variants = {
            "pruned": dict(method="importance", recover_steps=0),
            "pruned_recovered": dict(method="importance", recover_steps=setup["recover"]),
            "magnitude": dict(method="magnitude", recover_steps=0),
        }
        comparisons, models = {}, {"parent": load_trained(parent)[1]}
        for name, kw in variants.items():
            folder, c = prune_run(parent, args.heads, args.ffn, out=Path(tmp) / name, **kw)
            comparisons[name] = c
            models[name] = load_trained(folder)[1]
        vocab = models["parent"].spec.vocab_size
        speeds = speed(models, setup["batch"], vocab, args.rounds, args.steps)
    headline = comparisons["pruned"]["headline"]
    quality: dict[str, Any] = {}
    for name, c in comparisons.items():
        for split, m in c["metrics"].items():
            p, q = m["parent"][headline], m["pruned"][headline]
            quality.setdefault("parent", {})[split] = p
            quality.setdefault(name, {})[split] = q
            quality.setdefault(f"{name}_drop", {})[split] = p - q
    params = {"parent": comparisons["pruned"]["params"]["parent"]}
    params |= {name: c["params"]["pruned"] for name, c in comparisons.items()}
    n_rounds = len(speeds["inference"]["rounds_tokens_per_s"]["parent"])
    print(f"threads {args.threads}, {n_rounds} rounds (rotated) x {args.steps} steps, "
          f"heads -{args.heads:.0%}, ffn -{args.ffn:.0%}, batch {setup['batch']}")  # fmt: skip
    print(f"{'model':18s} {'params':>9s} " + " ".join(f"{s + ' ' + headline:>14s}"
          for s in quality["parent"]) + f" {'infer x':>8s} {'train x':>8s}")  # fmt: skip
    for name in models:
        ratios = [
            1.0 if name == "parent" else speeds[m][f"ratio_{name}_vs_parent"]
            for m in ("inference", "training")
        ]
        cells = " ".join(f"{quality[name][s]:14.4f}" for s in quality["parent"])
        print(f"{name:18s} {params[name]:9,d} {cells} {ratios[0]:8.2f} {ratios[1]:8.2f}")
    print("x: tokens/s relative to the parent (median of per-round ratios)")
    record = {
        **benchmark_environment(args.threads),
        "rounds": n_rounds,
        "steps": args.steps,
        "setup": {k: v for k, v in setup.items()},
        "pruned_fraction": {"heads": args.heads, "ffn": args.ffn},
        "headline": headline,
        "params": params,
        "quality": quality,
        "sparsity": {name: c["sparsity"] for name, c in comparisons.items()},
        "speed": speeds,
    }
    if not (args.no_save or args.quick):
        print(f"wrote {save_benchmark(json.loads(json.dumps(record)), RESULTS, 'prune_speed')}")
    return record


if __name__ == "__main__":
    main()

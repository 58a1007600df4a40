"""The cost of each variant of a comparison, and its training-loss curve.

Per variant (at its chosen learning rate): ``params``; ``flops_per_token``, the model's
training FLOPs per real token (3x the forward matrix products,
:meth:`~anyformer.model.transformer.Transformer.flops_per_token`) averaged over the
timed training batches; ``tokens_per_s``, training speed measured after all runs by
:func:`~anyformer.training.cost.interleaved_speed` (every variant in turn, in rounds, so
a slow spell of a shared machine touches all of them); ``wall_s``, the mean wall time of
its runs' training sessions, measured one run after another and so subject to that
drift (for the record, not for ranking); ``peak_memory_bytes``, the peak memory of
building the variant and training a few steps, measured for one variant at a time
(:func:`measure_memory`, :class:`~anyformer.training.cost.PeakMemory`;
``memory_measure`` says what was measured).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from anyformer.lab.compare import Variant


def flops_per_token(variant: Variant, steps: int) -> float:
    """Training FLOPs per real token of ``variant`` over its training batches
    ``0 .. steps-1`` (counted on the ``meta`` device: no weights are allocated)."""
    import torch

    from anyformer.lab.run import build_task
    from anyformer.model.transformer import build_model

    spec = variant.spec
    task = build_task(spec)
    with torch.device("meta"):
        model = build_model(spec.model)
    flops = tokens = 0.0
    for i in range(steps):
        batch = task.train_batch(i, spec.train.batch_size)
        n = batch.n_real_tokens
        flops += model.flops_per_token(int(batch.inputs.shape[1])) * n
        tokens += n
    return flops / tokens if tokens else 0.0


def _trainer(variant: Variant) -> Any:
    """A fresh, seeded trainer of ``variant`` without a run folder."""
    from anyformer.lab.run import build_objective, build_task, prepare_model
    from anyformer.training.trainer import Trainer

    task = build_task(variant.spec)
    model = prepare_model(variant.spec)
    return Trainer(model, task, build_objective(variant.spec, task), variant.spec.train)


def _steps(trainer: Any, steps: int) -> None:
    for i in range(steps):
        trainer.train_step(i)


def measure_memory(variants: list[Variant], steps: int) -> dict[str, tuple[int | None, str]]:
    """Peak memory of each variant alone: building its model and trainer and training
    ``steps`` steps on batches ``0 .. steps-1``, inside
    :class:`~anyformer.training.cost.PeakMemory`, one variant at a time, everything
    released in between. A throwaway pass of the first variant runs first, so one-time
    costs of the process (lazy initialisation, thread pools) land on no variant."""
    from anyformer.training.cost import PeakMemory, release_memory
    from anyformer.training.trainer import resolve_device

    device = resolve_device(variants[0].spec.train.device)
    warm = _trainer(variants[0])
    _steps(warm, 1)
    warm.close()
    del warm
    out = {}
    for v in variants:
        release_memory(device)
        with PeakMemory(device) as peak:
            trainer = _trainer(v)
            _steps(trainer, steps)
        trainer.close()
        del trainer
        out[v.label] = (peak.bytes, peak.kind)
    release_memory(device)
    return out


def measure_speed(variants: list[Variant], rounds: int, steps: int) -> dict[str, dict[str, Any]]:
    """Interleaved training speed of every variant (fresh seeded models, no run folder)."""
    import torch

    from anyformer.training.cost import interleaved_speed, trainer_stepper

    trainers = {}
    try:
        for v in variants:
            trainers[v.label] = _trainer(v)
        device = next(iter(trainers.values())).device
        sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else None
        steppers = {label: trainer_stepper(t) for label, t in trainers.items()}
        return interleaved_speed(steppers, rounds, steps, sync)
    finally:
        for t in trainers.values():
            t.close()


def variant_costs(
    variants: list[Variant],
    run_costs: dict[str, dict[Any, list[dict[str, Any]]]],
    lrs: dict[str, float],
    timing: tuple[int, int] | None,
) -> dict[str, dict[str, Any]]:
    """The cost record of every variant (see the module docstring); ``run_costs`` holds
    each run's ``cost.json`` by label and learning rate. ``timing`` = (rounds, steps) of
    the speed and memory measurements (``None``: neither is measured)."""
    import torch

    rounds, steps = timing or (0, 3)
    speeds: dict[str, dict[str, Any]] = {}
    memory: dict[str, tuple[int | None, str]] = {}
    if timing and variants:
        threads = torch.get_num_threads()
        if variants[0].spec.train.threads:
            torch.set_num_threads(variants[0].spec.train.threads)
        try:
            memory = measure_memory(variants, steps)
            speeds = measure_speed(variants, rounds, steps)
        finally:
            torch.set_num_threads(threads)
    out: dict[str, dict[str, Any]] = {}
    for v in variants:
        runs = [c for c in run_costs.get(v.label, {}).get(lrs.get(v.label), []) if c]
        walls = [float(c["wall_s"]) for c in runs if c.get("wall_s") is not None]
        speed = speeds.get(v.label, {})
        peak, kind = memory.get(v.label, (None, None))
        out[v.label] = {
            "params": v.params,
            "flops_per_token": flops_per_token(v, steps),
            "tokens_per_s": speed.get("tokens_per_s"),
            "rounds_tokens_per_s": speed.get("rounds_tokens_per_s"),
            "speed_measure": f"interleaved, {rounds} rounds x {steps} steps" if timing else None,
            "wall_s": sum(walls) / len(walls) if walls else None,
            "wall_s_runs": walls,
            "peak_memory_bytes": peak,
            "memory_measure": f"{kind}, model + optimizer + {steps} training steps"
            if kind
            else None,
        }
    return out

"""Findings about algorithmic tasks: hinted sorting, associative recall, graph search."""

from __future__ import annotations

from typing import Any

from anyformer.lab.compare import CompareResult
from anyformer.lab.findings.base import Comparison, Finding, Verdict, quick_train, tiny_model
from anyformer.registry import NoParams, Paper, register

#: Training keys that keep a full run from evaluating or checkpointing before its end.
_END_ONLY = {"eval_every": 100000, "checkpoint_every": 100000}


@register(
    "finding",
    "task_hinting",
    paper=Paper(
        "Improving Length-Generalization in Transformers via Task Hinting", 2023, "Awasthi & Gupta"
    ),
    summary="training a sorter beside a successor-hint task makes it sort longer inputs",
    params=NoParams,
)
class TaskHinting(Finding):
    """A decoder (64 wide, 2 layers, RoPE) learns ``sort`` on lengths 2–10 alone
    (``hint=none``), or with half of every batch spent on a hint task built from the
    same strings: each element's successor in sorted order (``successor``, the hint the
    paper found best) or its rank (``rank``, reported only). All are tested on lengths
    11–20. The measure is out-of-distribution exact match (a whole sorted sequence
    right, teacher-forced), as the paper counts a sorted sequence right or wrong.
    Holds when the successor-hinted model's OOD exact match exceeds the un-hinted
    model's by at least 0.1. Inconclusive when the un-hinted or the successor-hinted
    model sorts fewer than half of the in-distribution strings (``learned_at``): what
    a model that has not learned the task does on longer strings says nothing about
    length generalization.
    """

    claim = (
        "A Transformer trained to sort short sequences sorts much longer ones only when an "
        "auxiliary hint task (e.g. each element's successor in sorted order) is trained in "
        "the same model."
    )
    hints = ["none", "successor", "rank"]
    margin = 0.1
    learned_at = 0.5

    def comparisons(self, quick: bool) -> dict[str, Comparison]:
        task = {"name": "sort", "min_len": 2, "max_len": 10, "ood_min_len": 11, "ood_max_len": 20,
                "n_symbols": 10}  # fmt: skip
        model = {"d_model": 64, "n_layers": 2, "n_heads": 4, "max_len": 48}
        train = {"steps": 2500, "batch_size": 32, "lr": 3e-3, "warmup_steps": 100, "eval_size": 512}
        if quick:
            model, train = tiny_model(max_len=48), quick_train()
        train |= _END_ONLY
        base = {"name": "task_hinting", "model": model, "task": task, "train": train}
        axes = [("task.hint", self.hints)]
        return {"main": Comparison(base, axes, seeds=1 if quick else 2)}

    def check(self, results: dict[str, CompareResult]) -> Verdict:
        r = results["main"]
        numbers: dict[str, float] = {}
        for hint in self.hints:
            label = f"hint={hint}"
            numbers[f"{hint}: id exact_match"] = r.mean(label, "exact_match")
            numbers[f"{hint}: ood exact_match"] = r.mean(label, "exact_match", "ood")
            numbers[f"{hint}: ood token_accuracy"] = r.mean(label, "token_accuracy", "ood")
        plain = numbers["none: ood exact_match"]
        hinted = numbers["successor: ood exact_match"]
        in_dist = min(numbers["none: id exact_match"], numbers["successor: id exact_match"])
        return Verdict.decide(
            hinted - plain >= self.margin,
            numbers,
            f"OOD exact match (lengths 11-20): successor hint {hinted:.3f} vs no hint {plain:.3f} "
            f"(needs a lead of {self.margin}); rank hint {numbers['rank: ood exact_match']:.3f}",
            in_dist >= self.learned_at,
            f"a model did not learn to sort in distribution (exact match {in_dist:.3f}, "
            f"needs >= {self.learned_at})",
        )


#: The recall-gap setup of tests/lab/test_recall_gap.py: post-norm, init 0.07, learned positions.
_RECALL_MODEL: dict[str, Any] = {
    "d_model": 64, "n_heads": 4, "n_layers": 2, "position": "learned", "norm_placement": "post",
    "init_std": 0.07, "max_len": 40,
}  # fmt: skip


@register(
    "finding",
    "associative_recall_gap",
    paper=Paper(
        "Parallelizing Linear Transformers with the Delta Rule over Sequence Length",
        2024,
        "Yang et al.",
    ),  # fmt: skip
    summary="on MQAR softmax attention out-recalls linear attention at equal width; the delta rule narrows the gap",
    params=NoParams,
)
class AssociativeRecallGap(Finding):
    """Decoders of equal width and depth (64 wide, 2 layers, 4 heads) differing only in
    their mixer: softmax attention, additive linear attention (``linear``) or DeltaNet
    (``delta``), trained with the same budget on multi-query associative recall (16 keys,
    16 values, 4–8 pairs, 4 queries). The measure is query accuracy on held-out
    sequences (``id``). Holds when softmax leads linear attention by at least 0.1 (the
    recall gap) and delta leads linear attention by at least 0.03 (it narrows the gap).
    Inconclusive when softmax attention is not at least 0.1 above chance (``1 /
    n_values``): then no mixer learned the task and there is no gap to measure.
    Linear and delta run their chunked forms with 16-token chunks, which only makes
    them cheaper on these short rows (the chunked forms are exact for any chunk size);
    each mixer is its own one-variant comparison, since their parameters differ.
    """

    claim = (
        "On multi-query associative recall, softmax attention recalls far better than linear "
        "attention of the same width, and the delta-rule update (DeltaNet) narrows that gap."
    )
    gap = 0.1
    narrowing = 0.03
    learned_margin = 0.1

    def comparisons(self, quick: bool) -> dict[str, Comparison]:
        task = {"name": "mqar", "n_keys": 16, "n_values": 16, "min_pairs": 4, "max_pairs": 8,
                "ood_min_pairs": 9, "ood_max_pairs": 12, "n_queries": 4}  # fmt: skip
        model = dict(_RECALL_MODEL)
        train = {"steps": 1500, "batch_size": 64, "lr": 1e-3, "warmup_steps": 50,
                 "min_lr_ratio": 1.0, "eval_size": 500}  # fmt: skip
        if quick:
            keep = ("position", "norm_placement", "init_std", "max_len")
            model, train = tiny_model(**{k: model[k] for k in keep}), quick_train()
        train |= _END_ONLY
        mixers: dict[str, Any] = {
            "softmax": "softmax",
            "linear": {"name": "linear", "chunk_size": 16},
            "delta": {"name": "delta", "chunk_size": 16},
        }
        return {
            name: Comparison(
                {
                    "name": f"recall_{name}",
                    "model": model | {"attention": attention},
                    "task": task,
                    "train": train,
                },
                [("model.attention.name", [name])],
                seeds=1 if quick else 2,
            )
            for name, attention in mixers.items()
        }

    def check(self, results: dict[str, CompareResult]) -> Verdict:
        names = ("softmax", "linear", "delta")
        acc = {k: results[k].mean(f"name={k}", "accuracy") for k in names}
        ood = {k: results[k].mean(f"name={k}", "accuracy", "ood") for k in names}
        numbers = {f"{k}: id accuracy": v for k, v in acc.items()}
        numbers |= {f"{k}: ood accuracy (9-12 pairs)": v for k, v in ood.items()}
        chance = numbers["chance"] = results["softmax"].mean("name=softmax", "chance")
        gap = acc["softmax"] - acc["linear"]
        narrowed = acc["delta"] - acc["linear"]
        return Verdict.decide(
            gap >= self.gap and narrowed >= self.narrowing,
            numbers,
            f"id accuracy: softmax {acc['softmax']:.3f}, delta {acc['delta']:.3f}, linear "
            f"{acc['linear']:.3f} (chance {chance:.3f}); softmax − linear {gap:+.3f} (needs "
            f"≥ {self.gap}), delta − linear {narrowed:+.3f} (needs ≥ {self.narrowing})",
            acc["softmax"] >= chance + self.learned_margin,
            f"softmax attention did not learn the task (accuracy {acc['softmax']:.3f}, "
            f"chance {chance:.3f}; needs +{self.learned_margin})",
        )


@register(
    "finding",
    "search_does_not_scale",
    paper=Paper("Transformers Struggle to Learn to Search", 2024, "Saparov et al."),
    summary="next-vertex accuracy on graph search falls with graph size, and a wider model does not fix it",
    params=NoParams,
)
class SearchDoesNotScale(Finding):
    """Decoders (2 layers, 4 heads, RoPE) of width 32 and 96 (about 9× the parameters)
    are each trained on ``graph_search`` (``next_vertex``: which child of the source
    leads to the target) on graphs of exactly 6 vertices (lookahead 1–2) or exactly 12
    (lookahead 1–5), with the same step budget; each is tested on held-out graphs of
    its training size (``id`` exact match).

    Matched distance: the two sizes are built with different lookahead mixes, and
    accuracy depends on the lookahead, so the sizes are compared on the lookaheads both
    have (1 and 2): the mean of the per-lookahead exact match (``by_distance``) over
    those. Chance: the source always has exactly two children, one of which is the
    answer, so answering a random child of the source is right half the time (0.5, at
    every lookahead and size; the task reports it as ``baselines.chance.exact_match``,
    which the check reads when present).

    Holds when (a) for both widths, matched-distance accuracy on 12-vertex graphs is at
    least 0.1 below that on 6-vertex graphs, and (b) the wide model's drop is at least
    half the narrow model's (more parameters do not remove most of the drop).
    Inconclusive unless both widths beat chance by at least 0.1 on 6-vertex graphs: a
    model that has not learned to search small graphs cannot show that search gets
    harder as they grow. The overall exact match and the ``ood`` split (13 vertices,
    shared by all) are reported only.
    """

    claim = (
        "Transformers trained to search graphs get less accurate as the graphs grow, and "
        "adding parameters does not fix the drop."
    )
    sizes = ["6", "12"]
    widths = ["32", "96"]
    drop = 0.1
    kept = 0.5
    #: Exact match of answering a uniformly random child of the source (it has two).
    chance = 0.5
    learned_margin = 0.1

    def comparisons(self, quick: bool) -> dict[str, Comparison]:
        task = {"name": "graph_search", "query": "next_vertex", "min_vertices": 6, "max_vertices": 6,
                "ood_min_vertices": 13, "ood_max_vertices": 13}  # fmt: skip
        model = {"d_model": 32, "n_layers": 2, "n_heads": 4, "max_len": 96}
        train = {"steps": 1500, "batch_size": 32, "lr": 1e-3, "warmup_steps": 100, "eval_size": 256}
        if quick:
            model, train = tiny_model(max_len=96), quick_train()
        train |= _END_ONLY
        base = {"name": "search_does_not_scale", "model": model, "task": task, "train": train}
        axes = [
            ("task.min_vertices,task.max_vertices", [f"{n}:{n}" for n in self.sizes]),
            ("model.d_model", self.widths),
        ]
        return {"main": Comparison(base, axes, seeds=1 if quick else 2)}

    def check(self, results: dict[str, CompareResult]) -> Verdict:
        r = results["main"]
        small, large = self.sizes[0], self.sizes[-1]

        def label(n: str, width: str) -> str:
            return f"min_vertices={n},max_vertices={n},d_model={width}"

        def distances(n: str, width: str) -> set[int]:
            keys = r.summary[label(n, width)]["id"]
            return {int(k.split(".")[1]) for k in keys if k.startswith("by_distance.")}

        shared = sorted(
            set.intersection(*(distances(n, w) for n in self.sizes for w in self.widths))
        )
        if not shared:
            raise ValueError("search_does_not_scale: the graph sizes share no lookahead")

        def matched(n: str, width: str) -> float:
            per = [r.mean(label(n, width), f"by_distance.{k}") for k in shared]
            return sum(per) / len(per)

        reported = [
            r.summary[label(n, w)]["id"].get("baselines.chance.exact_match")
            for n in self.sizes
            for w in self.widths
        ]
        chance = max(float(c["mean"]) for c in reported) if all(reported) else self.chance
        numbers: dict[str, float] = {"chance (random child of the source)": chance}
        drops: dict[str, float] = {}
        for width in self.widths:
            for n in self.sizes:
                numbers[f"d_model {width}, {n} vertices, lookahead {shared[0]}-{shared[-1]}"] = (
                    matched(n, width)
                )
                numbers[f"d_model {width}, {n} vertices, all lookaheads"] = r.mean(
                    label(n, width), "exact_match"
                )
            numbers[f"d_model {width}, ood 13 vertices (trained on {large})"] = r.mean(
                label(large, width), "exact_match", "ood"
            )
            drops[width] = matched(small, width) - matched(large, width)
            numbers[f"d_model {width}: matched drop {small} -> {large} vertices"] = drops[width]
        narrow, wide = drops[self.widths[0]], drops[self.widths[-1]]
        falls = all(d >= self.drop for d in drops.values())
        not_fixed = wide >= self.kept * narrow
        small_acc = min(matched(small, w) for w in self.widths)
        return Verdict.decide(
            falls and not_fixed,
            numbers,
            f"exact-match drop from {small} to {large} vertices at lookaheads "
            f"{shared[0]}-{shared[-1]}: d_model {self.widths[0]} {narrow:+.3f}, d_model "
            f"{self.widths[-1]} {wide:+.3f} (each needs ≥ {self.drop}; the wide drop needs "
            f"≥ {self.kept} × the narrow one); chance {chance:.3g}",
            small_acc >= chance + self.learned_margin,
            f"on {small}-vertex graphs a model is at {small_acc:.3f}, not {self.learned_margin} "
            f"above chance ({chance:.3g}): it did not learn to search even small graphs",
        )

"""Findings about Transformers on code (the standard-library code corpus, synthetic
programs with tests).

``split_encode_aggregate_long_code`` (SEA) reads ``code_search``; the CodeT5 finding
``identifier_aware_pretraining`` pretrains on ``code_lm`` and fine-tunes on
``code_search`` with the pretrain -> fine-tune machinery of
:mod:`anyformer.lab.findings.pretraining`.

``prompt_tuning_few_labels`` (Zecoler) pretrains an encoder on ``code_lm`` and compares
prompt tuning, fine-tuning and training from scratch on ``method_name`` with few labels
(the pretrain -> fine-tune machinery of :mod:`anyformer.lab.findings.pretraining`).

The retrieval checks read ``code_search``'s ``mrr@10`` on the ``id`` split (held-out library
modules) and the size of its pool; a model counts as having learned the retrieval when
its ``mrr@10`` is at least ``LEARNED_FACTOR`` times that of a random ranking of the same
pool (:func:`chance_mrr10`).
"""

from __future__ import annotations

from typing import Any

from anyformer.lab.compare import CompareResult
from anyformer.lab.findings.base import PARENT, Comparison, Finding, Verdict, quick_train
from anyformer.lab.findings.pretraining import _label
from anyformer.objectives.identifiers import CODET5
from anyformer.registry import NoParams, register
from anyformer.tasks.code_completion import PG_TD
from anyformer.tasks.code_names import ZECOLER
from anyformer.tasks.code_search import SEA
from anyformer.tasks.text import stdlib_root

#: a model learned the retrieval when its mrr@10 is this many times a random ranking's
LEARNED_FACTOR = 3.0


def chance_mrr10(pool: float) -> float:
    """``mrr@10`` of a uniformly random ranking of ``pool`` keys: ``sum_{r<=10} 1/r / pool``."""
    n = max(int(round(pool)), 1)
    return sum(1.0 / r for r in range(1, min(n, 10) + 1)) / n


def quick_library() -> str | None:
    """A small library folder for quick mode: the standard library's ``unittest``
    package (its own modules, and its test suite as ``ood``), when it has one."""
    folder = stdlib_root() / "unittest"
    return str(folder) if (folder / "test").is_dir() else None


@register(
    "finding",
    "split_encode_aggregate_long_code",
    paper=SEA,
    summary="for functions longer than the window, split-encode-aggregate (mean of line-"
    "aligned blocks) retrieves better than truncation",
    params=NoParams,
)
class SplitEncodeAggregateLongCode(Finding):
    """Two bi-encoders on ``code_search`` restricted to functions longer than the window
    (``long_only``: more than ``code_len`` = 64 BPE tokens; byte-level BPE of 2,048 ids),
    identical but for how a long function becomes its embedding: ``truncate`` (its first
    64 tokens) or ``split`` (SEA: line-aligned blocks of at most 64 tokens, up to 8, each
    encoded, embeddings averaged). Encoder of width 64, 2 layers, mean pooling into a
    64-d ``embed`` head, ``info_nce`` over in-batch negatives, 600 steps of 64 pairs, 2
    seeds; every query ranked against the whole ``id`` pool (held-out modules).
    Holds when ``split``'s mean ``mrr@10`` is at least ``lead`` (0.02) above
    ``truncate``'s. Inconclusive when neither model learned the retrieval (``mrr@10``
    below three times a random ranking's on the same pool)."""

    claim = (
        "For code longer than the encoder's window, splitting it into blocks, encoding "
        "each and aggregating their embeddings (SEA) retrieves it from its docstring "
        "better than truncating it to the window."
    )
    lead = 0.02

    def comparisons(self, quick: bool) -> dict[str, Comparison]:
        model = {"kind": "encoder", "d_model": 64, "n_layers": 2, "n_heads": 4, "max_len": 64}
        task: dict[str, Any] = {"name": "code_search", "long_only": True, "code_len": 64,
                                "query_len": 32, "max_blocks": 8}  # fmt: skip
        train = {"steps": 600, "batch_size": 64, "lr": 2e-3, "warmup_steps": 30,
                 "eval_size": 400, "threads": 1}  # fmt: skip
        if quick:
            model |= {"d_model": 32, "n_layers": 1, "n_heads": 2}
            task |= {"tokenizer": "bytes", "val_fraction": 0.3, "min_query_chars": 8}
            root = quick_library()
            if root is not None:
                task["root"] = root
            train = quick_train(lr=2e-3, threads=1)
        train |= {"eval_every": 100000, "checkpoint_every": 100000}
        base = {"name": "split_encode_aggregate_long_code", "model": model, "task": task,
                "train": train}  # fmt: skip
        axes = [("task.long_code", ["truncate", "split"])]
        return {"main": Comparison(base, axes, seeds=1 if quick else 2)}

    def check(self, results: dict[str, CompareResult]) -> Verdict:
        r = results["main"]
        truncate, split = (v.label for v in r.variants)
        numbers = {
            "truncate id mrr@10": r.mean(truncate, "mrr@10"),
            "split id mrr@10": r.mean(split, "mrr@10"),
            "truncate ood mrr@10": r.mean(truncate, "mrr@10", "ood"),
            "split ood mrr@10": r.mean(split, "mrr@10", "ood"),
            "bm25 id mrr@10": r.mean(truncate, "baselines.bm25.mrr@10"),
            "tfidf id mrr@10": r.mean(truncate, "baselines.tfidf.mrr@10"),
            "id pool": r.mean(truncate, "pool"),
        }
        numbers["chance id mrr@10"] = chance_mrr10(numbers["id pool"])
        lead = numbers["split id mrr@10"] - numbers["truncate id mrr@10"]
        best = max(numbers["split id mrr@10"], numbers["truncate id mrr@10"])
        bar = LEARNED_FACTOR * numbers["chance id mrr@10"]
        return Verdict.decide(
            lead >= self.lead,
            numbers,
            f"split − truncate id mrr@10 {lead:+.3f} (needs >= {self.lead:+.2f}); BM25 "
            f"{numbers['bm25 id mrr@10']:.3f}, TF-IDF {numbers['tfidf id mrr@10']:.3f} on "
            f"the same pool of {numbers['id pool']:.0f}",
            best >= bar,
            f"neither model learned the retrieval (best id mrr@10 {best:.3f}, needs >= "
            f"{bar:.3f}, three times a random ranking's)",
        )


@register(
    "finding",
    "test_guided_planning_beats_sampling",
    paper=PG_TD,
    summary="at equal model calls, PG-TD tree search guided by public tests solves more "
    "problems on hidden tests than sampling with filtering",
    params=NoParams,
)
class GuidedPlanningBeatsSampling(Finding):
    """One decoder (width 64, 2 layers, byte-level) trained on ``completion_with_tests``'
    synthetic problems (signature + docstring with two public examples -> one-line body;
    300 steps of 16 rows), 2 seeds. On each split's first 24 problems, PG-TD (P-UCB over
    the model's top 3 tokens with its probabilities as priors, greedy rollouts rewarded by
    the share of public tests passed) and sampling with filtering (temperature 0.8, the
    program passing most public tests kept) each get at most 128 model calls per problem
    (one call = one next-token distribution of one new prefix; both share nothing).
    Holds when PG-TD's share of ``id`` problems whose program passes every hidden test
    exceeds sampling's by at least ``lead`` (0.05, set before the full run), averaged
    over seeds. Inconclusive when the model never passes anything (no hidden pass by
    either method and pass@5 of plain sampling 0)."""

    claim = (
        "Given the same number of model calls, tree search over tokens that runs each "
        "rollout against the public tests (PG-TD) finds programs that pass the hidden "
        "tests more often than sampling programs and keeping the one that passes most "
        "public tests."
    )
    lead = 0.05

    def comparisons(self, quick: bool) -> dict[str, Comparison]:
        model = {"kind": "decoder", "d_model": 64, "n_layers": 2, "n_heads": 4, "max_len": 256}
        task: dict[str, Any] = {
            "name": "completion_with_tests",
            "decode": "plan",
            "budget": 128,
            "eval_problems": 24,
            "samples": 10,
            "k": 5,
        }
        train: dict[str, Any] = {
            "steps": 300,
            "batch_size": 16,
            "lr": 3e-3,
            "warmup_steps": 30,
            "eval_size": 24,
            "threads": 1,
        }
        if quick:
            model |= {"d_model": 32, "n_layers": 1, "n_heads": 2}
            task |= {"budget": 8, "eval_problems": 2, "samples": 2, "k": 2, "max_new_tokens": 8}
            train = quick_train(lr=3e-3, threads=1, eval_size=2, eval_splits=["id"])
        train |= {"eval_every": 100000, "checkpoint_every": 100000}
        base = {"name": "test_guided_planning_beats_sampling", "model": model, "task": task,
                "train": train}  # fmt: skip
        return {"main": Comparison(base, [], seeds=1 if quick else 2)}

    def check(self, results: dict[str, CompareResult]) -> Verdict:
        r = results["main"]
        (label,) = (v.label for v in r.variants)
        k = r.variants[0].spec.task.params.get("k", 5)
        numbers = {
            "plan id pass": r.mean(label, "plan_pass"),
            "filter id pass": r.mean(label, "filter_pass"),
            "plan id test rate": r.mean(label, "plan_test_rate"),
            "filter id test rate": r.mean(label, "filter_test_rate"),
            "plan id calls": r.mean(label, "plan_calls"),
            "filter id calls": r.mean(label, "filter_calls"),
            "id pass@1": r.mean(label, "pass@1"),
            f"id pass@{k}": r.mean(label, f"pass@{k}"),
            "return_none id pass@1": r.mean(label, "baselines.return_none.pass@1"),
            "most_common_body id pass@1": r.mean(label, "baselines.most_common_body.pass@1"),
        }
        if "plan_pass" in r.summary[label].get("ood", {}):
            numbers["plan ood pass"] = r.mean(label, "plan_pass", "ood")
            numbers["filter ood pass"] = r.mean(label, "filter_pass", "ood")
        lead = numbers["plan id pass"] - numbers["filter id pass"]
        best = max(numbers["plan id pass"], numbers["filter id pass"], numbers[f"id pass@{k}"])
        return Verdict.decide(
            lead >= self.lead,
            numbers,
            f"hidden-test pass on id: PG-TD {numbers['plan id pass']:.3f} vs sampling + "
            f"filtering {numbers['filter id pass']:.3f} ({lead:+.3f}, needs >= "
            f"{self.lead:+.2f}) at {numbers['plan id calls']:.0f} vs "
            f"{numbers['filter id calls']:.0f} model calls per problem; pass@1 "
            f"{numbers['id pass@1']:.3f}, pass@{k} {numbers[f'id pass@{k}']:.3f}; most common "
            f"body {numbers['most_common_body id pass@1']:.3f}, return None "
            f"{numbers['return_none id pass@1']:.3f}",
            best > 0.0,
            f"the model never passes anything (no hidden pass by either method, pass@{k} 0)",
        )


# --------------------------------------------------------------------------- CodeT5
#: the stdlib package both stages of ``identifier_aware_pretraining`` read: ~1,000
#: training functions, ~200 held out (``id``), its test suite as ``ood``
CODET5_LIBRARY = "idlelib"


def _codet5_train(steps: int, lr: float, quick: bool) -> dict[str, Any]:
    train = {"steps": steps, "batch_size": 16, "lr": lr, "warmup_steps": max(steps // 10, 5),
             "eval_size": 400, "threads": 1, "log_every": 50}  # fmt: skip
    if quick:
        train = quick_train(lr=lr, threads=1, batch_size=8, steps=10, eval_size=16)
    return train | {"eval_every": 100000, "checkpoint_every": 100000}


@register(
    "finding",
    "identifier_aware_pretraining",
    paper=CODET5,
    summary="CodeT5's identifier-aware pretraining (span corruption + identifier tagging + "
    "masked identifier prediction) fine-tunes to better code search than span corruption "
    "alone, at equal steps",
    params=NoParams,
)
class IdentifierAwarePretraining(Finding):
    """Two byte-level encoder–decoders (width 64, 2 + 2 layers, 4 heads, rotary
    positions, ``max_len`` 128) are pretrained on ``code_lm`` (functions of the standard
    library's ``idlelib``, training modules only, first 127 bytes of each) for 400 steps
    of 16 rows at lr 2e-3, identical but for the objective: ``span_corruption`` (T5) or
    ``identifier_aware`` (CodeT5: each batch one of span corruption, identifier tagging
    and masked identifier prediction, drawn uniformly; the same sentinels). Each
    pretrained encoder (``init_from`` an encoder–decoder run takes its encoder) is then
    fine-tuned end to end as a bi-encoder on ``code_search`` (the same library: first
    paragraph of a docstring, 48 bytes, against the function without its docstring, 128
    bytes; mean pooling into a new 64-d ``embed`` head; ``info_nce`` at temperature 0.1
    over in-batch negatives) for 300 steps of 16 pairs at lr 5e-4, beside the same
    bi-encoder trained from scratch for the same 300 steps (one seed: the budget of a
    shared 2-core CPU). Holds when the identifier-aware backbone's fine-tuned ``mrr@10``
    on ``id`` (held-out modules, every query ranked against the whole pool) is at least
    ``lead`` (0.02) above the span-corruption backbone's. Inconclusive when no fine-tuned
    model learned the retrieval (best ``mrr@10`` below three times a random ranking's on
    the same pool). From scratch, TF-IDF and BM25 are reported beside them but do not
    decide the claim; both pretraining runs report their held-out span-corruption loss
    (``identifier_aware`` evaluates span corruption only)."""

    claim = (
        "Identifier-aware pretraining of an encoder-decoder on code (span corruption, "
        "identifier tagging and masked identifier prediction, alternated) gives an encoder "
        "that fine-tunes to better docstring-to-code search than span corruption alone, at "
        "equal pretraining and fine-tuning steps."
    )
    lead = 0.02
    objectives = ("span_corruption", "identifier_aware")
    keys = ("span", "codet5")

    def comparisons(self, quick: bool) -> dict[str, Comparison]:
        model = {"kind": "encoder", "d_model": 64, "n_layers": 2, "n_heads": 4,
                 "position": "rope", "max_len": 128}  # fmt: skip
        root = str(stdlib_root() / CODET5_LIBRARY)
        pre_task = {"name": "code_lm", "tokenizer": "bytes", "seq_len": 128, "root": root}
        task = {"name": "code_search", "tokenizer": "bytes", "code_len": 128,
                "query_len": 48, "root": root}  # fmt: skip
        pre_steps, fine_steps, seeds = 400, 300, 1
        if quick:
            model |= {"d_model": 16, "n_layers": 1, "n_heads": 2, "max_len": 32}
            small = quick_library() or root
            pre_task |= {"seq_len": 32, "root": small, "val_fraction": 0.3}
            task |= {"code_len": 32, "query_len": 16, "root": small, "val_fraction": 0.3,
                     "min_query_chars": 8}  # fmt: skip
        name = "identifier_aware_pretraining"
        out = {}
        for key, objective in zip(self.keys, self.objectives):
            pretrain = {"name": name, "model": model | {"kind": "encoder_decoder"},
                        "task": pre_task, "objective": {"name": objective},
                        "train": _codet5_train(pre_steps, 2e-3, quick)}  # fmt: skip
            out[key] = Comparison(pretrain, [("objective.name", [objective])], seeds=seeds)
        finetune = {"name": name, "model": model, "task": task,
                    "objective": {"name": "info_nce", "temperature": 0.1},
                    "train": _codet5_train(fine_steps, 5e-4, quick)}  # fmt: skip
        parents = ["null"] + [f"{PARENT}{k}" for k in self.keys]
        out["finetune"] = Comparison(finetune, [("init_from", parents)], seeds=seeds)
        return out

    def check(self, results: dict[str, CompareResult]) -> Verdict:
        r = results["finetune"]
        labels = {"scratch": _label(r, "null")}
        labels |= {k: _label(r, f"{PARENT}{k}") for k in self.keys}
        numbers = {f"{k} id mrr@10": r.mean(v, "mrr@10") for k, v in labels.items()}
        numbers |= {f"{k} ood mrr@10": r.mean(v, "mrr@10", "ood") for k, v in labels.items()}
        for key in self.keys:
            pre = results[key]
            loss = pre.summary[pre.variants[0].label]["id"].get("loss")
            if loss is not None:
                numbers[f"{key} pretraining id span loss"] = float(loss["mean"])
        first = labels["scratch"]
        numbers["bm25 id mrr@10"] = r.mean(first, "baselines.bm25.mrr@10")
        numbers["tfidf id mrr@10"] = r.mean(first, "baselines.tfidf.mrr@10")
        numbers["id pool"] = r.mean(first, "pool")
        numbers["chance id mrr@10"] = chance_mrr10(numbers["id pool"])
        bar = LEARNED_FACTOR * numbers["chance id mrr@10"]
        codet5, span = numbers["codet5 id mrr@10"], numbers["span id mrr@10"]
        lead = codet5 - span
        best = max(codet5, span, numbers["scratch id mrr@10"])
        return Verdict.decide(
            lead >= self.lead,
            numbers,
            f"fine-tuned id mrr@10 after identifier-aware pretraining {codet5:.3f} vs span "
            f"corruption {span:.3f}: {lead:+.3f} (needs >= {self.lead:+.2f}); from scratch "
            f"{numbers['scratch id mrr@10']:.3f}; BM25 {numbers['bm25 id mrr@10']:.3f}, "
            f"TF-IDF {numbers['tfidf id mrr@10']:.3f} on the same pool of "
            f"{numbers['id pool']:.0f}",
            best >= bar,
            f"no fine-tuned model learned the retrieval (best id mrr@10 {best:.3f}, needs >= "
            f"{bar:.3f}, three times a random ranking's)",
        )  # fmt: skip


# --------------------------------------------------------------------------- Zecoler
def _only(result: CompareResult) -> str:
    (variant,) = result.variants
    return variant.label


@register(
    "finding",
    "prompt_tuning_few_labels",
    paper=ZECOLER,
    summary="prompt tuning a frozen code-pretrained encoder recovers most of full fine-"
    "tuning's gain over the majority class with 64 labelled functions",
    params=NoParams,
)
class PromptTuningFewLabels(Finding):
    """A byte-level encoder (width 64, 2 layers, 4 heads, rotary positions) is pretrained
    with BERT's ``mlm`` on ``code_lm`` (the standard library's functions, first 64
    bytes, training modules only) for 300 steps of 32 rows. Downstream is
    ``method_name`` (Zecoler's method-name prediction in cloze form: a function with its
    name blanked, the name's first word among the 5 most common, ``__init__``, ``get``,
    ``set``, ``is``, ``__repr__``) with only 64 labelled training functions, scored on
    held-out modules (``id``, up to 300 functions, first 64 bytes; the pretraining
    never saw them). Three models train 150 steps of 16 on those 64 functions: full fine-tuning of the
    pretrained encoder (lr 2e-3), prompt tuning of it (``adapter: prompt``, 16 learned
    vectors before the inputs and the new ``classify`` head train, every backbone weight
    frozen, lr 1e-2) and the same encoder from scratch (lr 2e-3); 2 seeds (each its
    own pretraining). Holds when
    prompt tuning's mean ``id`` accuracy gains at least ``share`` (90%) of fine-tuning's
    gain over the majority class. Inconclusive when fine-tuning does not beat the
    majority class by ``learned`` (0.05). Bag-of-words logistic regression on the same
    64 functions and the from-scratch model are reported beside. Zecoler reads the
    label through the pretrained MLM's own head (cloze); here a new classification head
    is trained on the mean-pooled encoder, and the zero-shot transfer to another
    language is not tested."""

    claim = (
        "With few labels (64 functions), prompt tuning of a frozen code-pretrained encoder "
        "(only the prompt and the head train) comes within 10% of full fine-tuning's gain "
        "over the majority class on method-name prediction."
    )
    share = 0.9
    learned = 0.05
    n_tokens = 16

    def comparisons(self, quick: bool) -> dict[str, Comparison]:
        # max_len leaves room for the prompt's 16 positions (the backbones must match)
        model = {"kind": "encoder", "d_model": 64, "n_layers": 2, "n_heads": 4,
                 "position": "rope", "max_len": 64 + self.n_tokens}  # fmt: skip
        lm_task: dict[str, Any] = {"name": "code_lm", "seq_len": 64}
        task: dict[str, Any] = {"name": "method_name", "train_functions": 64,
                                "code_len": 64, "eval_functions": 300}  # fmt: skip
        pre = {"steps": 300, "batch_size": 32, "lr": 2e-3, "warmup_steps": 20, "eval_size": 128,
               "threads": 1}  # fmt: skip
        fine = {"steps": 150, "batch_size": 16, "lr": 2e-3, "warmup_steps": 10,
                "eval_size": 300, "threads": 1}  # fmt: skip
        if quick:
            model |= {"d_model": 32, "n_layers": 1, "n_heads": 2, "max_len": 32 + self.n_tokens}
            root = quick_library()
            shared = {"val_fraction": 0.3} | ({"root": root} if root is not None else {})
            lm_task |= {"seq_len": 32} | shared
            task |= {"code_len": 32, "train_functions": 16, "eval_functions": 16} | shared
            pre = fine = quick_train(lr=2e-3, threads=1, steps=10, eval_size=16)
        pre = pre | {"eval_every": 100000, "checkpoint_every": 100000}
        fine = fine | {"eval_every": 100000, "checkpoint_every": 100000}
        seeds = 1 if quick else 2
        name = "prompt_tuning_few_labels"
        pretrain = {"name": name, "model": model, "task": lm_task, "objective": "mlm",
                    "train": pre}  # fmt: skip
        down = {"name": name, "model": model | {"head": "classify"}, "task": task,
                "train": fine}  # fmt: skip
        prompt = down | {"adapter": {"kind": "prompt", "n_tokens": self.n_tokens,
                                     "train_head": True},
                         "train": fine | {"lr": 1e-2}}  # fmt: skip
        parent = [("init_from", [f"{PARENT}pretrain"])]
        return {
            "pretrain": Comparison(pretrain, [("objective", ["mlm"])], seeds=seeds),
            "finetune": Comparison(down, parent, seeds=seeds),
            "prompt": Comparison(prompt, parent, seeds=seeds),
            "scratch": Comparison(down, [("init_from", ["null"])], seeds=seeds),
        }

    def check(self, results: dict[str, CompareResult]) -> Verdict:
        fine, prompt, scratch = (results[k] for k in ("finetune", "prompt", "scratch"))
        f, p, s = _only(fine), _only(prompt), _only(scratch)
        numbers = {
            "fine-tuned id accuracy": fine.mean(f, "accuracy"),
            "prompt-tuned id accuracy": prompt.mean(p, "accuracy"),
            "from scratch id accuracy": scratch.mean(s, "accuracy"),
            "fine-tuned id macro_f1": fine.mean(f, "macro_f1"),
            "prompt-tuned id macro_f1": prompt.mean(p, "macro_f1"),
            "from scratch id macro_f1": scratch.mean(s, "macro_f1"),
            "majority id accuracy": fine.mean(f, "baselines.majority.accuracy"),
            "bow_logreg id accuracy": fine.mean(f, "baselines.bow_logreg.accuracy"),
            "fine-tuned ood accuracy": fine.mean(f, "accuracy", "ood"),
            "prompt-tuned ood accuracy": prompt.mean(p, "accuracy", "ood"),
        }
        pre = results["pretrain"]
        loss = pre.summary[_only(pre)]["id"].get("loss")
        if loss is not None:
            numbers["pretraining id loss"] = float(loss["mean"])
        majority = numbers["majority id accuracy"]
        gain_fine = numbers["fine-tuned id accuracy"] - majority
        gain_prompt = numbers["prompt-tuned id accuracy"] - majority
        share = gain_prompt / gain_fine if gain_fine > 0 else 0.0
        numbers["prompt / fine-tuned gain over majority"] = share
        return Verdict.decide(
            gain_prompt >= self.share * gain_fine,
            numbers,
            f"id accuracy: prompt-tuned {numbers['prompt-tuned id accuracy']:.3f}, fine-tuned "
            f"{numbers['fine-tuned id accuracy']:.3f}, from scratch "
            f"{numbers['from scratch id accuracy']:.3f}, majority {majority:.3f}, bag-of-words "
            f"{numbers['bow_logreg id accuracy']:.3f}; prompt tuning has {share:.0%} of "
            f"fine-tuning's gain over the majority class (needs >= {self.share:.0%})",
            gain_fine >= self.learned,
            f"fine-tuning did not beat the majority class by {self.learned} "
            f"({numbers['fine-tuned id accuracy']:.3f} vs {majority:.3f})",
        )

"""Function completion checked by tests (``completion_with_tests``), with pass@k and
test-guided planning.

The model reads a function's ``def`` line and docstring (its public examples included)
and writes the body (:mod:`anyformer.tasks.code_synth`: ``source: synthetic``, a small
Python subset a CPU model learns in minutes, split by template so ``ood`` is new
programs; or ``source: stdlib``, the standard library's doctest-bearing functions, split
by module). A row is ``prompt + body + separator``; the loss and the teacher-forced
metrics count the body's tokens only (``body_token_accuracy``, ``body_exact_match``,
beside the most common training body).

Evaluation also *runs* what the model writes: for each of the first ``eval_problems``
problems it samples ``samples`` bodies (``temperature``, at most ``max_new_tokens``
tokens, a fixed generator), runs every one against all the problem's tests through
:func:`~anyformer.tasks.code_execution.run_candidates` (the sandbox, many candidates per
call, each isolated and time-limited; nothing generated runs in this process), and
reports ``pass@1`` and ``pass@k`` with Chen et al.'s unbiased estimator, beside the
same for two fixed bodies: ``return None`` and the most common training body. Decoding
samples with the run's model by cached generation when the trainer passes it
(``predict.model``, a decoder whose mixers cache) and otherwise through ``predict``
(whole prefixes recomputed); planning always asks ``predict`` for whole prefixes.

``decode: plan`` adds PG-TD (:mod:`anyformer.decoding.planning`): tree search guided by
the public tests against sampling with filtering, both with at most ``budget`` model
calls per problem; the hidden tests decide ``plan_pass`` and ``filter_pass`` (the share
of problems whose chosen program passes every hidden test), with ``*_test_rate`` (the
share of hidden tests passed) and ``*_calls`` (model calls spent per problem).

Papers: Chen et al. (2021), "Evaluating Large Language Models Trained on Code" (pass@k);
PG-TD (Zhang et al., 2023).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from functools import cached_property
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from pydantic import ConfigDict, Field

from anyformer.registry import Capabilities, Paper, register
from anyformer.tasks.base import SPLIT_IDS, Batch, Task, rng_for, torch_generator
from anyformer.tasks.code_execution import Candidate, pass_at_k, run_candidates
from anyformer.tasks.code_synth import (
    OOD_TEMPLATES,
    TRAIN_TEMPLATES,
    Problem,
    prompt_bucket,
    stdlib_problems,
    synthetic_problem,
)
from anyformer.tasks.tokenizer import (
    Codec,
    TokenizerFields,
    TrainedTokenizer,
    texts_digest,
)

PG_TD = Paper("Planning with Large Language Models for Code Generation", 2023, "Zhang et al.")
#: Rows per evaluation batch, and prefixes per model call while decoding.
EVAL_ROWS, DECODE_ROWS = 32, 256
#: Data order seed (fixed: every run evaluates the same problems).
DATA_SEED = 0
#: Synthetic prompts whose bucket (of 100) is below this are held out as ``id``.
ID_BUCKETS = 10
#: Synthetic training problems the tokenizer and the most common body are read from.
REFERENCE_PROBLEMS = 500
NONE_BODY = "    return None\n"
#: A generated body (token ids after the prompt).
Prefix = tuple[int, ...]


class CompletionParams(TokenizerFields):
    """Parameters of ``completion_with_tests``.

    - ``source``: ``synthetic`` (templates, default) or ``stdlib`` (doctest-bearing
      functions of the standard library, or of the library at ``root``).
    - ``seq_len``: longest row (prompt + body + separator; longer stdlib problems are
      left out); a prompt plus ``max_new_tokens`` must fit too.
    - ``samples`` (n) and ``k``: bodies sampled per problem, and the k of ``pass@k``.
    - ``eval_problems``: problems per split that evaluation runs (the rest are scored
      teacher-forced only); ``temperature``, ``max_new_tokens``: sampling.
    - ``decode``: ``sample`` (pass@k) or ``plan`` (also PG-TD against sampling with
      filtering at ``budget`` model calls per problem; ``width`` children per node,
      exploration ``c_puct``).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)
    source: Literal["synthetic", "stdlib"] = "synthetic"
    root: str | None = None
    seq_len: int = Field(240, ge=32)
    samples: int = Field(10, ge=1, le=1000)
    k: int = Field(5, ge=1, le=1000)
    eval_problems: int = Field(32, ge=1)
    temperature: float = Field(0.8, gt=0.0, le=10.0)
    max_new_tokens: int = Field(48, ge=1)
    decode: Literal["sample", "plan"] = "sample"
    budget: int = Field(256, ge=1)
    width: int = Field(3, ge=1, le=64)
    c_puct: float = Field(4.0, ge=0.0, le=100.0)


def _can_generate(model: Any) -> bool:
    """Whether ``model`` is a token decoder with an lm head whose mixers all cache."""
    from anyformer.model.transformer import Transformer, cache_blockers

    return (
        isinstance(model, Transformer)
        and model.spec.kind == "decoder"
        and model.head_kind == "lm"
        and not cache_blockers(model)
    )


@register(
    "task",
    "completion_with_tests",
    paper=PG_TD,
    summary="complete a function from its signature and docstring; pass@1/pass@k of sampled "
    "bodies run against tests in the sandbox; optional PG-TD planning (synthetic Python "
    "subset split by template, or stdlib doctests)",
    params=CompletionParams,
    caps=Capabilities(),
)
class CompletionWithTests(TrainedTokenizer, Task):
    """Signature + docstring -> body, evaluated by running it; see the module docstring."""

    byte_level: ClassVar[bool] = True
    disjoint_splits: ClassVar[bool] = True
    headline: ClassVar[str] = "pass@1"
    higher_is_better: ClassVar[bool] = True
    params: CompletionParams

    def __init__(self, params: CompletionParams, seed: int = 0) -> None:
        if params.k > params.samples:
            from anyformer.errors import SpecError

            raise SpecError(
                f"task.k={params.k} must be <= task.samples={params.samples} (pass@k needs "
                f"at least k samples per problem)"
            )
        super().__init__(params, seed)
        self._codec: Codec | None = None
        self._baselines: dict[tuple[str, int], dict[str, Any]] = {}

    # ------------------------------------------------------------------ data
    def _fits(self, p: Problem) -> bool:
        n_prompt = len(self.codec.encode(p.prompt))
        n_body = len(self.codec.encode(p.body)) + 1
        return n_prompt + max(n_body, self.params.max_new_tokens) <= self.params.seq_len + 1

    @cached_property
    def stdlib(self) -> dict[str, list[Problem]]:
        """The stdlib problems per split, in a fixed shuffled order (``source: stdlib``)."""
        found = stdlib_problems(self.params.root)
        out = {}
        for split in ("train", "id", "ood"):
            probs = found[split]
            if not probs:
                raise ValueError(f"split '{split}' has no function with doctests")
            order = rng_for(DATA_SEED, SPLIT_IDS[split]).permutation(len(probs))
            out[split] = [probs[i] for i in order]
        return out

    def _draw(self, split: str, rng: np.random.Generator) -> Problem:
        """One synthetic problem of ``split`` (``train``/``id`` by prompt bucket)."""
        templates = OOD_TEMPLATES if split == "ood" else TRAIN_TEMPLATES
        while True:
            p = synthetic_problem(templates[int(rng.integers(len(templates)))], rng)
            held = prompt_bucket(p.prompt) < ID_BUCKETS
            if split == "ood" or held == (split == "id"):
                return p

    @cached_property
    def reference(self) -> list[Problem]:
        """Training problems the tokenizer and the most common body are read from."""
        if self.params.source == "stdlib":
            return self.stdlib["train"]
        rng = rng_for(DATA_SEED, SPLIT_IDS["train"], 10**6)
        return [self._draw("train", rng) for _ in range(REFERENCE_PROBLEMS)]

    def tokenizer_corpus(self) -> tuple[str, Callable[[], Iterable[str]]]:
        texts = [p.source() for p in self.reference]
        return f"{self.params.source}:{texts_digest(texts)}", lambda: iter(texts)

    def problems(self, split: str, size: int) -> list[Problem]:
        """The first ``size`` problems of an evaluation split (distinct prompts)."""
        if self.params.source == "stdlib":
            return [p for p in self.stdlib[split] if self._fits(p)][:size]
        rng = rng_for(DATA_SEED, SPLIT_IDS[split])
        out: dict[str, Problem] = {}
        for _ in range(50 * size):
            if len(out) >= size:
                break
            p = self._draw(split, rng)
            out.setdefault(p.prompt, p)
        return list(out.values())

    def model_io(self) -> dict[str, Any]:
        vocab = self.params.vocab_size if self.params.tokenizer != "bytes" else 256
        return {"vocab_size": vocab, "embed": "tokens", "head": "lm"}

    def max_seq_len(self) -> int:
        return self.params.seq_len

    def _batch(self, problems: list[Problem]) -> Batch:
        rows = []
        for p in problems:
            prompt = self.codec.encode(p.prompt)
            ids = [*prompt, *self.codec.encode(p.body), self.codec.separator]
            rows.append((ids[: self.params.seq_len + 1], len(prompt)))
        width = max(len(ids) for ids, _ in rows) - 1
        shape = (len(rows), width)
        inputs, targets = torch.zeros(shape, dtype=torch.long), torch.zeros(shape, dtype=torch.long)
        real, body = torch.zeros(shape, dtype=torch.bool), torch.zeros(shape, dtype=torch.bool)
        for r, (ids, n_prompt) in enumerate(rows):
            n = len(ids) - 1
            inputs[r, :n] = torch.tensor(ids[:-1])
            targets[r, :n] = torch.tensor(ids[1:])
            real[r, :n] = True
            body[r, n_prompt - 1 : n] = True
        return Batch(inputs, targets, body, padding_mask=real)

    def train_batch(self, step: int, batch_size: int) -> Batch:
        rng = rng_for(self.seed, SPLIT_IDS["train"], step)
        if self.params.source == "stdlib":
            pool = [p for p in self.stdlib["train"] if self._fits(p)]
            pick = rng.choice(len(pool), size=min(batch_size, len(pool)), replace=False)
            return self._batch([pool[int(i)] for i in pick])
        return self._batch([self._draw("train", rng) for _ in range(batch_size)])

    def make_eval_set(self, split: str, size: int) -> list[Batch]:
        if size < 1:
            raise ValueError(f"eval size={size} must be >= 1")
        probs = self.problems(split, size)
        if not probs:
            raise ValueError(f"split '{split}' has no problem within seq_len")
        return [self._batch(probs[i : i + EVAL_ROWS]) for i in range(0, len(probs), EVAL_ROWS)]

    # --------------------------------------------------------------- scoring
    @cached_property
    def common_body(self) -> str:
        """The most common body of the training problems (first seen on ties)."""
        return Counter(p.body for p in self.reference).most_common(1)[0][0]

    def score(self, outputs: list[torch.Tensor], batches: list[Batch]) -> dict[str, Any]:
        """Teacher-forced ``body_token_accuracy`` and ``body_exact_match`` (every body
        token and the separator right), beside the most common training body's exact
        match."""
        common = self.codec.encode(self.common_body) + [self.codec.separator]
        right = total = exact = rows = same = 0
        for out, b in zip(outputs, batches):
            hit = (out.argmax(-1) == b.targets) & b.loss_mask
            right += int(hit.sum())
            total += int(b.loss_mask.sum())
            exact += int((hit | ~b.loss_mask).all(-1).sum())
            for r in range(b.targets.shape[0]):
                same += int(b.targets[r][b.loss_mask[r]].tolist() == common)
            rows += b.targets.shape[0]
        return {
            "body_token_accuracy": right / max(total, 1),
            "body_exact_match": exact / max(rows, 1),
            "problems": rows,
            "baselines": {"most_common_body": {"body_exact_match": same / max(rows, 1)}},
        }

    @torch.no_grad()
    def evaluate(
        self,
        predict: Callable[[Batch], torch.Tensor],
        split: str,
        size: int,
        loss_fn: Callable[[torch.Tensor, Batch], torch.Tensor] | None = None,
    ) -> dict[str, Any]:
        """:meth:`Task.evaluate` (teacher-forced) plus the metrics of running sampled
        bodies (and, with ``decode: plan``, planned ones); see the module docstring."""
        metrics = super().evaluate(predict, split, size, loss_fn)
        probs = self.problems(split, min(size, self.params.eval_problems))
        metrics.update(self.generation_metrics(predict, split, probs))
        base = self.baseline_passes(split, probs)
        for name, value in base.items():
            metrics["baselines"].setdefault(name, {}).update(value)
        return metrics

    def _prompts(self, probs: list[Problem]) -> list[list[int]]:
        return [self.codec.encode(p.prompt) for p in probs]

    def next_logprobs(
        self, predict: Callable[[Batch], torch.Tensor], prompts: list[list[int]]
    ) -> Callable[[list[tuple[int, Prefix]]], list[torch.Tensor]]:
        """``[(problem, prefix)] -> next-token log-probs``: one forward of each whole
        prompt + prefix (``DECODE_ROWS`` rows per call)."""

        def lm(requests: list[tuple[int, Prefix]]) -> list[torch.Tensor]:
            out: list[torch.Tensor] = []
            for start in range(0, len(requests), DECODE_ROWS):
                seqs = [prompts[i] + list(p) for i, p in requests[start : start + DECODE_ROWS]]
                lengths = torch.tensor([len(s) for s in seqs])
                width = int(lengths.max())
                ids = torch.zeros((len(seqs), width), dtype=torch.long)
                for r, s in enumerate(seqs):
                    ids[r, : len(s)] = torch.tensor(s)
                real = torch.arange(width)[None] < lengths[:, None]
                logits = predict(Batch(ids, torch.zeros_like(ids), real, padding_mask=real))
                last = logits.float().cpu()[torch.arange(len(seqs)), lengths - 1]
                out.extend(torch.log_softmax(last, dim=-1).unbind(0))
            return out

        return lm

    def body_text(self, ids: Prefix) -> str:
        """A generated body: its ids up to the separator, as text ending in a newline."""
        ids = tuple(ids)
        if self.codec.separator in ids:
            ids = ids[: ids.index(self.codec.separator)]
        text = self.codec.decode(ids)
        return text if text.endswith("\n") else text + "\n"

    def sample_bodies(
        self,
        lm: Callable[[list[tuple[int, Prefix]]], list[torch.Tensor]],
        n_problems: int,
        generator: torch.Generator,
        model: Any = None,
        prompts: list[list[int]] | None = None,
    ) -> list[list[Prefix]]:
        """``samples`` bodies per problem, every row decoded in one batch per step: with
        the run's ``model`` (a token decoder that caches) by cached generation of the
        ``prompts``, else through ``lm`` (whole prefixes recomputed)."""
        p = self.params
        if model is not None and prompts is not None and _can_generate(model):
            return self._generate_bodies(model, prompts, generator)
        rows: list[tuple[int, Prefix]] = [(i, ()) for i in range(n_problems)
                                          for _ in range(p.samples)]  # fmt: skip
        live = list(range(len(rows)))
        eos = self.codec.separator
        while live:
            dists = lm([rows[r] for r in live])
            probs = torch.stack(dists).div(p.temperature).softmax(-1)
            toks = torch.multinomial(probs, 1, generator=generator).squeeze(-1).tolist()
            for r, t in zip(live, toks):
                rows[r] = (rows[r][0], (*rows[r][1], int(t)))
            live = [r for r in live if rows[r][1][-1] != eos and len(rows[r][1]) < p.max_new_tokens]
        out: list[list[Prefix]] = [[] for _ in range(n_problems)]
        for i, body in rows:
            out[i].append(body)
        return out

    def _generate_bodies(
        self, model: Any, prompts: list[list[int]], generator: torch.Generator
    ) -> list[list[Prefix]]:
        from anyformer.decoding import generate

        p, eos = self.params, self.codec.separator
        rows = [q for q in prompts for _ in range(p.samples)]
        out: list[list[Prefix]] = [[] for _ in prompts]
        device = next(model.parameters()).device
        for start in range(0, len(rows), DECODE_ROWS):
            chunk = rows[start : start + DECODE_ROWS]
            width = max(len(r) for r in chunk)
            ids = torch.zeros((len(chunk), width), dtype=torch.long)
            for r, q in enumerate(chunk):
                ids[r, : len(q)] = torch.tensor(q)
            real = torch.arange(width)[None] < torch.tensor([len(q) for q in chunk])[:, None]
            seq = generate(
                model,
                ids.to(device),
                p.max_new_tokens,
                temperature=p.temperature,
                eos=eos,
                generator=generator,
                padding_mask=real.to(device),
            )
            for r, q in enumerate(chunk):
                body = seq[r, len(q) : len(q) + p.max_new_tokens].tolist()
                if eos in body:
                    body = body[: body.index(eos) + 1]
                out[(start + r) // p.samples].append(tuple(body))
        return out

    def generation_metrics(
        self, predict: Callable[[Batch], torch.Tensor], split: str, probs: list[Problem]
    ) -> dict[str, Any]:
        """pass@1 and pass@k of sampled bodies on every test; with ``decode: plan`` the
        hidden-test results of PG-TD and of sampling with filtering at equal calls."""
        p = self.params
        prompts = self._prompts(probs)
        lm = self.next_logprobs(predict, prompts)
        gen = torch_generator(self.seed, SPLIT_IDS[split], 17)
        bodies = self.sample_bodies(lm, len(probs), gen, getattr(predict, "model", None), prompts)
        cands = [Candidate(q.source(self.body_text(b)), q.tests, q.module)
                 for q, bs in zip(probs, bodies) for b in bs]  # fmt: skip
        flags = run_candidates(cands)
        correct = [sum(all(flags[i * p.samples + j]) for j in range(p.samples))
                   for i in range(len(probs))]  # fmt: skip
        out: dict[str, Any] = {
            "pass@1": float(np.mean([pass_at_k(p.samples, c, 1) for c in correct])),
            f"pass@{p.k}": float(np.mean([pass_at_k(p.samples, c, p.k) for c in correct])),
            "eval_problems": len(probs),
        }
        if p.decode == "plan":
            out.update(self.plan_metrics(lm, split, probs))
        return out

    def public_rewards(
        self, probs: list[Problem]
    ) -> Callable[[list[tuple[int, Prefix]]], list[float]]:
        """``[(problem, body)] -> share of its public tests passed`` (one sandbox call)."""

        def rewards(requests: list[tuple[int, Prefix]]) -> list[float]:
            cands = [Candidate(probs[i].source(self.body_text(b)), probs[i].public,
                               probs[i].module) for i, b in requests]  # fmt: skip
            return [float(np.mean(f)) if f else 0.0 for f in run_candidates(cands)]

        return rewards

    def plan_metrics(
        self,
        lm: Callable[[list[tuple[int, Prefix]]], list[torch.Tensor]],
        split: str,
        probs: list[Problem],
    ) -> dict[str, Any]:
        """PG-TD and sampling with filtering at ``budget`` model calls per problem, both
        judged on the hidden tests."""
        from anyformer.decoding.planning import drive, pg_td, sample_filter

        p = self.params
        eos, n = self.codec.separator, len(probs)
        out: dict[str, Any] = {"budget": p.budget}
        gens = [torch_generator(self.seed, SPLIT_IDS[split], 23, i) for i in range(n)]
        methods = {
            "plan": [pg_td(eos, p.max_new_tokens, p.budget, p.width, p.c_puct) for _ in probs],
            "filter": [sample_filter(eos, p.max_new_tokens, p.budget, p.temperature, g)
                       for g in gens],
        }  # fmt: skip
        for name, searches in methods.items():
            results = drive(searches, lm, self.public_rewards(probs))
            cands = [Candidate(q.source(self.body_text(r.best or ())), q.hidden, q.module)
                     for q, r in zip(probs, results)]  # fmt: skip
            flags = run_candidates(cands)
            out[f"{name}_pass"] = float(np.mean([bool(f) and all(f) for f in flags]))
            out[f"{name}_test_rate"] = float(np.mean([np.mean(f) if f else 0.0 for f in flags]))
            out[f"{name}_public_pass"] = float(np.mean([r.reward >= 1.0 for r in results]))
            out[f"{name}_calls"] = float(np.mean([r.calls for r in results]))
            out[f"{name}_programs"] = float(np.mean([r.programs for r in results]))
        return out

    def baseline_passes(self, split: str, probs: list[Problem]) -> dict[str, dict[str, float]]:
        """pass@1 (= pass@k: a fixed body) of ``return None`` and of the most common
        training body on the evaluated problems (run once per split and size)."""
        key = (split, len(probs))
        if key not in self._baselines:
            bodies = {"return_none": NONE_BODY, "most_common_body": self.common_body}
            cands = [Candidate(q.source(b), q.tests, q.module)
                     for b in bodies.values() for q in probs]  # fmt: skip
            flags = run_candidates(cands)
            n = len(probs)
            self._baselines[key] = {
                name: {"pass@1": float(np.mean([all(f) for f in flags[j * n : (j + 1) * n]])),
                       f"pass@{self.params.k}":
                           float(np.mean([all(f) for f in flags[j * n : (j + 1) * n]]))}
                for j, name in enumerate(bodies)
            }  # fmt: skip
        return self._baselines[key]

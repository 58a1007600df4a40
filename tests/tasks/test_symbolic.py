"""Behaviour of the symbolic tasks (selective copy, multiplication, Dyck, ListOps) and of
sorting with task hints: determinism, disjoint splits, answers checked by independent
computations, loss and score masks, and scores."""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError

from anyformer import registry
from anyformer.errors import SpecError
from anyformer.tasks import algorithmic as alg
from anyformer.tasks import symbolic as sym
from anyformer.tasks.base import Batch

F = alg.FIRST_SYMBOL
NAMES = ["selective_copy", "multiplication", "dyck", "listops"]
# (task, params) pairs every generic test runs on; small sizes keep the file fast
CONFIGS = [
    ("selective_copy", {}),
    ("selective_copy", {"n_copy": 2, "min_len": 3, "max_len": 6, "ood_min_len": 7}),
    ("multiplication", {"format": "plain"}),
    ("multiplication", {"format": "reversed"}),
    ("multiplication", {"format": "reversed_answer"}),
    ("multiplication", {"format": "scratchpad"}),
    ("dyck", {"mode": "complete"}),
    ("dyck", {"mode": "complete", "k": 3, "max_depth": 3, "ood_max_depth": 6}),
    ("dyck", {"mode": "recognize"}),
    ("listops", {}),
    ("listops", {"branch_prob": 0.0, "max_args": 2}),
    ("sort", {"hint": "successor"}),
    ("sort", {"hint": "rank", "hint_fraction": 0.3}),
]
IDS = [f"{n}-{'-'.join(f'{k}={v}' for k, v in p.items())}" for n, p in CONFIGS]


def make(name: str, seed: int = 0, **params: object) -> alg.SequenceTask:
    entry = registry.get("task", name)
    return entry.cls(entry.params(**params), seed)


def rows_of(batch: Batch) -> list[list[int]]:
    """Full sequences ``BOS prompt SEP answer EOS`` without trailing padding."""
    seq = torch.cat([batch.inputs, batch.targets[:, -1:]], dim=1).tolist()
    return [r[: r.index(alg.EOS) + 1] for r in seq]


def split_row(row: list[int]) -> tuple[list[int], list[int]]:
    assert row[0] == alg.BOS and row[-1] == alg.EOS and alg.PAD not in row
    sep = row.index(alg.SEP)
    return row[1:sep], row[sep + 1 : -1]


def prompts_of(batches: list[Batch]) -> set[tuple[int, ...]]:
    return {tuple(split_row(r)[0]) for b in batches for r in rows_of(b)}


def number(tokens: list[int], reverse: bool = False) -> int:
    digits = [t - F for t in tokens]
    assert all(0 <= d <= 9 for d in digits)
    return int("".join(map(str, digits[::-1] if reverse else digits)))


# --------------------------------------------------------------------------- independent checks
def stack_run(brackets: list[int], k: int) -> tuple[bool, list[int]]:
    """(no mismatch so far, stack of open types) for bracket ids (open i, close k+i)."""
    stack: list[int] = []
    for b in brackets:
        if b < k:
            stack.append(b)
        elif stack and stack[-1] == b - k:
            stack.pop()
        else:
            return False, stack
    return True, stack


def max_depth(brackets: list[int], k: int) -> int:
    depth = best = 0
    for b in brackets:
        depth += 1 if b < k else -1
        best = max(best, depth)
    return best


def listops_eval(tokens: list[int]) -> tuple[int, int, int]:
    """(value, depth, tokens read) of the expression starting at ``tokens[0]``."""
    head = tokens[0] - F
    if head < 10:
        return head, 0, 1
    op = ["MIN", "MAX", "MED", "SM"][head - 10]
    i, args, depth = 1, [], 0
    while tokens[i] != sym.ListOps.CLOSE:
        value, d, used = listops_eval(tokens[i:])
        args.append(value)
        depth = max(depth, d)
        i += used
    ordered = sorted(args)
    value = {
        "MIN": ordered[0],
        "MAX": ordered[-1],
        "MED": ordered[(len(args) - 1) // 2],
        "SM": sum(args) % 10,
    }[op]
    return value, depth + 1, i + 1


def check_example(task: alg.SequenceTask, prompt: list[int], answer: list[int], group: int) -> None:
    name = registry.entry_of(type(task)).name
    p = task.params
    if name == "selective_copy":
        noise = task.noise_token
        assert len(prompt) == group and len(answer) == p.n_copy
        assert answer == [t for t in prompt if t != noise]
        assert all(F <= t < noise for t in answer)
    elif name == "multiplication":
        times = prompt.index(sym.Multiplication.TIMES)
        a_tok, b_tok = prompt[:times], prompt[times + 1 :]
        assert len(a_tok) == len(b_tok) == group
        rev = p.format == "reversed"
        a, b = number(a_tok, rev), number(b_tok, rev)
        if p.format == "scratchpad":
            step, eq = sym.Multiplication.STEP, sym.Multiplication.EQUALS
            assert answer[-2 * group - 1] == eq
            parts = answer[: -2 * group - 1]
            chunks, cur = [], []
            for t in parts:
                if t == step:
                    chunks.append(cur)
                    cur = []
                else:
                    cur.append(t)
            assert cur == [] and len(chunks) == 2 * group
            for j in range(group):
                digit = (b // 10**j) % 10
                assert len(chunks[2 * j]) == group + 1 and number(chunks[2 * j]) == a * digit
                assert len(chunks[2 * j + 1]) == 2 * group
                assert number(chunks[2 * j + 1]) == a * (b % 10 ** (j + 1))
            final = answer[-2 * group :]
        else:
            final = answer
        assert len(final) == 2 * group
        assert number(final, reverse=p.format in ("reversed", "reversed_answer")) == a * b
    elif name == "dyck":
        brackets = [t - F for t in prompt]
        assert len(brackets) == group and all(0 <= b < 2 * p.k for b in brackets)
        deepest = p.ood_max_depth if group >= p.ood_min_len and p.ood_max_depth else p.max_depth
        if p.mode == "complete":
            ok, stack = stack_run(brackets, p.k)
            assert ok and stack and max_depth(brackets, p.k) <= deepest
            assert answer == [F + p.k + s for s in reversed(stack)]
        else:
            ok, stack = stack_run(brackets, p.k)
            balanced = ok and not stack
            assert answer == [task.true_token if balanced else task.false_token]
            if balanced:
                assert max_depth(brackets, p.k) <= deepest
    elif name == "listops":
        value, depth, used = listops_eval(prompt)
        assert used == len(prompt) and depth == group
        assert answer == [F + value]
    elif name == "sort":
        assert prompt[0] == task.sort_token and len(prompt) == group + 1
        assert answer == sorted(prompt[1:])
    else:  # pragma: no cover
        raise AssertionError(name)


# --------------------------------------------------------------------------- tests
def test_registered_with_papers() -> None:
    years = {"selective_copy": 2023, "multiplication": 2023, "dyck": 2021, "listops": 2020}
    for name in NAMES:
        entry = registry.get("task", name)
        assert entry.paper is not None and entry.paper.year == years[name]
        assert entry.cls.splits == ("id", "ood") and entry.cls.default_objective == "causal_lm"
        assert entry.cls.headline == "exact_match" and entry.cls.higher_is_better
    assert "Mamba" in registry.get("task", "selective_copy").paper.title
    assert registry.get("task", "multiplication").paper.title == (
        "Teaching Arithmetic to Small Transformers"
    )
    assert registry.get("task", "listops").paper.title.startswith("Long Range Arena")


@pytest.mark.parametrize(("name", "params"), CONFIGS, ids=IDS)
def test_deterministic_by_seed_and_step(name: str, params: dict) -> None:
    a, b, c = make(name, 1, **params), make(name, 1, **params), make(name, 2, **params)
    b.train_batch(50, 8)  # other calls first must not change what a step yields
    for step in range(3):
        x, y = a.train_batch(step, 16), b.train_batch(step, 16)
        assert torch.equal(x.inputs, y.inputs) and torch.equal(x.targets, y.targets)
        assert torch.equal(x.loss_mask, y.loss_mask)
    assert any(
        a.train_batch(s, 16).inputs.shape != c.train_batch(s, 16).inputs.shape
        or not torch.equal(a.train_batch(s, 16).inputs, c.train_batch(s, 16).inputs)
        for s in range(3)
    )
    for split in ("id", "ood"):
        ea, eb = a.make_eval_set(split, 48), b.make_eval_set(split, 48)
        assert len(ea) == len(eb)
        assert all(torch.equal(p.inputs, q.inputs) for p, q in zip(ea, eb))


@pytest.mark.parametrize(("name", "params"), CONFIGS, ids=IDS)
def test_answers_are_correct(name: str, params: dict) -> None:
    task = make(name, **params)
    batches = task.make_eval_set("id", 60) + task.make_eval_set("ood", 60)
    if name != "sort":  # sort training rows mix in hints (checked below)
        batches += [task.train_batch(s, 16) for s in range(6)]
    vocab = task.model_io()["vocab_size"]
    for batch in batches:
        assert batch.inputs.shape[1] <= task.input_len(batch.group) <= task.max_seq_len()
        for row in rows_of(batch):
            assert all(0 <= t < vocab for t in row)
            prompt, answer = split_row(row)
            check_example(task, prompt, answer, batch.group)


@pytest.mark.parametrize(("name", "params"), CONFIGS, ids=IDS)
def test_id_test_prompts_never_trained_on(name: str, params: dict) -> None:
    task = make(name, **params)
    train_batches = [task.train_batch(s, 32) for s in range(60)]
    train = prompts_of(train_batches)
    if name == "sort":  # hint rows carry the same strings after another task token
        train = {p[1:] for p in train}
        test = {p[1:] for p in prompts_of(task.make_eval_set("id", 150))}
    else:
        test = prompts_of(task.make_eval_set("id", 150))
    assert test and train and train.isdisjoint(test)
    ood = task.make_eval_set("ood", 60)
    train_lengths = {b.group for b in train_batches}
    assert train_lengths <= set(task.lengths("train"))
    assert min(b.group for b in ood) > max(task.lengths("train"))


@pytest.mark.parametrize(("name", "params"), CONFIGS, ids=IDS)
def test_loss_mask_covers_answer_and_eos_only(name: str, params: dict) -> None:
    task = make(name, **params)
    for batch in [task.train_batch(0, 16), *task.make_eval_set("ood", 30)]:
        eos_at = []
        for inp, tgt, mask in zip(
            batch.inputs.tolist(), batch.targets.tolist(), batch.loss_mask.tolist()
        ):
            sep = inp.index(alg.SEP)
            eos = tgt.index(alg.EOS)
            eos_at.append(eos)
            assert mask == [sep <= t <= eos for t in range(len(inp))]
            assert all(t == alg.PAD for t in tgt[eos + 1 :])
        if len(set(eos_at)) == 1:  # rows of one length: nothing to mask
            assert batch.padding_mask is None and eos_at[0] == batch.inputs.shape[1] - 1
        else:  # padding trails the real tokens of each row
            real = [[t <= eos for t in range(batch.inputs.shape[1])] for eos in eos_at]
            assert batch.padding_mask.tolist() == real
        if "score_mask" in batch.extras:
            assert bool((batch.extras["score_mask"] <= batch.loss_mask).all())


@pytest.mark.parametrize(("name", "params"), CONFIGS, ids=IDS)
def test_score_perfect_and_wrong(name: str, params: dict) -> None:
    task = make(name, **params)
    batches = task.make_eval_set("ood", 40)
    vocab = task.model_io()["vocab_size"]

    def logits(targets: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.one_hot(targets, vocab).float()

    perfect = task.score([logits(b.targets) for b in batches], batches)
    assert perfect["exact_match"] == 1.0 and perfect["token_accuracy"] == 1.0
    assert set(perfect["by_length"]) == {str(b.group) for b in batches}
    assert perfect["curve"]["series"]["model"] == perfect["by_length"]
    assert perfect["curve"]["x"] == ("depth" if name == "listops" else "length")
    wrong = task.score([logits((b.targets + 1) % vocab) for b in batches], batches)
    assert wrong["exact_match"] == 0.0 and wrong["token_accuracy"] == 0.0
    # errors in the prompt (and the padding after EOS) do not count
    outside = [
        logits(torch.where(b.loss_mask, b.targets, (b.targets + 1) % vocab)) for b in batches
    ]
    assert task.score(outside, batches)["exact_match"] == 1.0


def test_scratchpad_scores_only_the_final_product() -> None:
    task = make("multiplication", format="scratchpad", max_len=2, ood_min_len=3, ood_max_len=3)
    batches = task.make_eval_set("ood", 20)
    vocab = task.model_io()["vocab_size"]
    for b in batches:
        score_mask = b.extras["score_mask"]
        length = b.group
        # the product's 2L digits and EOS are scored; the scratchpad is trained on only
        assert score_mask.sum(1).tolist() == [2 * length + 1] * b.inputs.shape[0]
        assert int(b.loss_mask.sum(1)[0]) == length * (3 * length + 3) + 2 * length + 2
    wrong_pad = []
    wrong_final = []
    for b in batches:
        scratch = b.loss_mask & ~b.extras["score_mask"]
        bumped = (b.targets + 1) % vocab
        wrong_pad.append(
            torch.nn.functional.one_hot(torch.where(scratch, bumped, b.targets), vocab)
        )
        last_digit = b.extras["score_mask"].float().cumsum(1) == 2 * b.group  # final digit
        wrong_final.append(
            torch.nn.functional.one_hot(torch.where(last_digit, bumped, b.targets), vocab)
        )
    assert task.score(wrong_pad, batches)["exact_match"] == 1.0
    scores = task.score(wrong_final, batches)
    assert scores["exact_match"] == 0.0
    # six product digits are scored tokens; EOS counts for exact match only
    assert scores["token_accuracy"] == pytest.approx(1 - 1 / (2 * 3))


def test_multiplication_formats_by_example() -> None:
    def text(tokens: list[int]) -> str:
        names = {sym.Multiplication.TIMES: "*", sym.Multiplication.STEP: ";"}
        names[sym.Multiplication.EQUALS] = "="
        return "".join(names.get(t, str(t - F)) for t in tokens)

    raw = torch.tensor([[1, 2, 3, 4]]).numpy()  # 12 * 34 = 408
    expected = {
        "plain": ("12*34", "0408"),
        "reversed": ("21*43", "8040"),
        "reversed_answer": ("12*34", "8040"),
        "scratchpad": ("12*34", "048;0048;036;0408;=0408"),
    }
    for fmt, (prompt, answer) in expected.items():
        p_tok, a_tok = make("multiplication", format=fmt).render(raw, 2)
        assert (text(p_tok[0].tolist()), text(a_tok[0].tolist())) == (prompt, answer)


def test_selective_copy_scatters_symbols() -> None:
    task = make("selective_copy", min_len=10, max_len=10, ood_min_len=11, ood_max_len=11)
    batch = task.train_batch(0, 200)
    noise = batch.inputs[:, 1:11] == task.noise_token
    assert (noise.sum(1) == 10 - task.params.n_copy).all()
    # every position holds a symbol in some row: positions are random, not fixed
    assert bool((~noise).any(0).all())


def test_dyck_recognize_is_balanced_with_hard_negatives() -> None:
    task = make("dyck", mode="recognize")
    labels, hard = [], 0
    for b in [task.train_batch(s, 64) for s in range(10)]:
        for row in rows_of(b):
            prompt, answer = split_row(row)
            labels.append(answer[0] == task.true_token)
            brackets = [t - F for t in prompt]
            opens = sum(x < task.params.k for x in brackets)
            hard += answer[0] == task.false_token and 2 * opens == len(brackets)
    share = sum(labels) / len(labels)
    assert 0.4 < share < 0.6
    assert hard > 0.5 * (len(labels) - sum(labels))  # most negatives keep the counts
    assert set(task.lengths("train")) == set(range(8, 21, 2))


def test_dyck_ood_nests_deeper() -> None:
    task = make("dyck", max_depth=2, ood_max_depth=6, ood_min_len=24, ood_max_len=24)
    train_deepest = max(
        max_depth([t - F for t in split_row(r)[0]], 2)
        for s in range(10)
        for r in rows_of(task.train_batch(s, 32))
    )
    ood_deepest = max(
        max_depth([t - F for t in split_row(r)[0]], 2)
        for b in task.make_eval_set("ood", 100)
        for r in rows_of(b)
    )
    assert train_deepest == 2 and ood_deepest > 2


def test_listops_groups_by_depth_and_covers_all_operations() -> None:
    task = make("listops")
    ops = set()
    for b in task.make_eval_set("ood", 60):
        for row in rows_of(b):
            ops |= {t for t in split_row(row)[0] if F + 10 <= t < sym.ListOps.CLOSE}
    assert ops == {F + 10, F + 11, F + 12, F + 13}
    assert list(task.lengths("ood")) == [4, 5]


# --------------------------------------------------------------------------- sort with hints
@pytest.mark.parametrize("hint", ["successor", "rank"])
def test_sort_hint_rows_are_right_and_mixed(hint: str) -> None:
    task = make("sort", hint=hint, hint_fraction=0.4, n_symbols=5)
    n_hint = n_rows = 0
    for s in range(20):
        for row in rows_of(task.train_batch(s, 32)):
            prompt, answer = split_row(row)
            n_rows += 1
            symbols = prompt[1:]
            if prompt[0] == task.sort_token:
                assert answer == sorted(symbols)
                continue
            assert prompt[0] == task.hint_token
            n_hint += 1
            order = sorted(range(len(symbols)), key=lambda i: (symbols[i], i))
            rank = {i: r for r, i in enumerate(order)}
            if hint == "rank":
                assert answer == [task.hint_token + 1 + rank[i] for i in range(len(symbols))]
            else:
                end = task.hint_token + 1
                expected = [
                    symbols[order[rank[i] + 1]] if rank[i] + 1 < len(symbols) else end
                    for i in range(len(symbols))
                ]
                assert answer == expected
    assert 0.3 < n_hint / n_rows < 0.5
    for b in task.make_eval_set("id", 50) + task.make_eval_set("ood", 50):
        assert (b.inputs[:, 1] == task.sort_token).all()  # evaluation is sorting only
    vocab = task.model_io()["vocab_size"]
    assert vocab == F + 5 + 2 + (1 if hint == "successor" else task.params.max_len)


def test_sort_without_hint_is_unchanged() -> None:
    plain = make("sort")
    batch = plain.train_batch(0, 8)
    assert plain.model_io()["vocab_size"] == F + 10
    assert batch.inputs.shape[1] == 2 * batch.group + 2  # no task token


# --------------------------------------------------------------------------- bad parameters
@pytest.mark.parametrize(
    ("name", "values", "needle"),
    [
        ("selective_copy", {"n_copy": 9, "min_len": 8}, "n_copy=9 must be <= min_len=8"),
        ("selective_copy", {"max_len": 16, "ood_min_len": 16}, "ood_min_len=16 must be > max_len"),
        ("multiplication", {"format": "long"}, "format='long'"),
        ("dyck", {"mode": "complete", "max_depth": 1}, "max_depth=1 must be >= 2"),
        ("dyck", {"max_depth": 4, "ood_max_depth": 3}, "ood_max_depth=3 must be >= max_depth=4"),
        ("dyck", {"k": 0}, "k=0"),
        ("listops", {"min_depth": 3, "max_depth": 2}, "max_depth=2 must be >= min_depth=3"),
        ("listops", {"ood_min_depth": 3}, "ood_min_depth=3 must be > max_depth=3"),
        ("listops", {"min_args": 4, "max_args": 3}, "max_args=3 must be >= min_args=4"),
        ("listops", {"min_args": 1}, "min_args=1"),
        ("sort", {"hint": "count"}, "hint='count'"),
        ("sort", {"hint_fraction": 1.0}, "hint_fraction=1.0"),
    ],
)
def test_bad_params_name_field_and_value(name: str, values: dict, needle: str) -> None:
    with pytest.raises(SpecError) as info:
        registry.get("task", name).make_params(values, where="task")
    assert needle in str(info.value)
    with pytest.raises(ValidationError):
        registry.get("task", name).params(**values)


def test_dyck_recognize_needs_an_even_length() -> None:
    with pytest.raises(ValueError, match="even length"):
        make("dyck", mode="recognize", min_len=5, max_len=5, ood_min_len=6, ood_max_len=7)

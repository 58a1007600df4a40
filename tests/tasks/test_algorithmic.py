"""Behaviour of the algorithmic tasks: determinism, disjoint splits, answers, masks, scores."""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError

from anyformer import registry
from anyformer.errors import SpecError
from anyformer.tasks import algorithmic as alg
from anyformer.tasks.base import Batch

NAMES = ["copy", "reverse", "sort", "parity", "addition"]


def make(name: str, seed: int = 0, **params: object) -> alg.SequenceTask:
    entry = registry.get("task", name)
    return entry.cls(entry.params(**params), seed)


def split_row(row: list[int]) -> tuple[list[int], list[int]]:
    """(prompt, answer) tokens of one full sequence ``BOS prompt SEP answer EOS``."""
    assert row[0] == alg.BOS and row[-1] == alg.EOS
    sep = row.index(alg.SEP)
    return row[1:sep], row[sep + 1 : -1]


def full_rows(batch: Batch) -> list[list[int]]:
    seq = torch.cat([batch.inputs, batch.targets[:, -1:]], dim=1)
    return seq.tolist()


def prompts_of(batches: list[Batch]) -> set[tuple[int, ...]]:
    return {tuple(split_row(r)[0]) for b in batches for r in full_rows(b)}


def digits_value(tokens: list[int], reverse: bool) -> int:
    digits = [t - alg.FIRST_SYMBOL for t in tokens]
    assert all(0 <= d <= 9 for d in digits)
    if reverse:
        digits = digits[::-1]
    return int("".join(map(str, digits)))


def check_answer(task: alg.SequenceTask, prompt: list[int], answer: list[int]) -> None:
    name = registry.entry_of(type(task)).name
    if name == "copy":
        assert answer == prompt
    elif name == "reverse":
        assert answer == prompt[::-1]
    elif name == "sort":
        assert answer == sorted(prompt)
    elif name == "parity":
        bits = [t - alg.FIRST_SYMBOL for t in prompt]
        assert set(bits) <= {0, 1}
        assert answer == [alg.FIRST_SYMBOL + sum(bits) % 2]
    elif name == "addition":
        fmt = task.params.format
        plus = prompt.index(alg.Addition.PLUS)
        a_tok, b_tok = prompt[:plus], prompt[plus + 1 :]
        assert len(a_tok) == len(b_tok) and len(answer) == len(a_tok) + 1
        a = digits_value(a_tok, reverse=fmt == "reversed")
        b = digits_value(b_tok, reverse=fmt == "reversed")
        assert digits_value(answer, reverse=fmt != "plain") == a + b
    else:  # pragma: no cover
        raise AssertionError(name)


def test_registered_with_papers() -> None:
    for name in NAMES:
        entry = registry.get("task", name)
        assert entry.paper is not None and entry.paper.year == 2023
        assert entry.cls.splits == ("id", "ood")
        assert entry.cls.default_objective == "causal_lm"
        assert entry.cls.headline == "exact_match" and entry.cls.higher_is_better
    assert "Task Hinting" in registry.get("task", "sort").paper.title
    assert (
        registry.get("task", "addition").paper.title == "Teaching Arithmetic to Small Transformers"
    )


@pytest.mark.parametrize("name", NAMES)
def test_deterministic_by_seed_and_step(name: str) -> None:
    a, b, c = make(name, seed=1), make(name, seed=1), make(name, seed=2)
    b.train_batch(99, 8)  # other calls first must not change what a step yields
    for step in range(4):
        x, y = a.train_batch(step, 16), b.train_batch(step, 16)
        assert torch.equal(x.inputs, y.inputs) and torch.equal(x.targets, y.targets)
    assert any(
        not torch.equal(a.train_batch(s, 16).inputs, c.train_batch(s, 16).inputs) for s in range(4)
    )
    assert not torch.equal(a.train_batch(0, 16).inputs, a.train_batch(1, 16).inputs)
    for split in ("id", "ood"):
        ea, eb = a.make_eval_set(split, 64), b.make_eval_set(split, 64)
        assert all(torch.equal(p.inputs, q.inputs) for p, q in zip(ea, eb))


@pytest.mark.parametrize(
    ("name", "params"),
    [
        ("copy", {"n_symbols": 3, "min_len": 2, "max_len": 5, "ood_min_len": 6, "ood_max_len": 7}),
        ("copy", {"min_len": 5, "max_len": 6, "ood_min_len": 7, "ood_max_len": 8}),
        ("parity", {"min_len": 3, "max_len": 9, "ood_min_len": 10, "ood_max_len": 11}),
        ("addition", {"min_len": 1, "max_len": 2, "ood_min_len": 3, "ood_max_len": 3}),
    ],
)
def test_id_test_prompts_never_trained_on(name: str, params: dict) -> None:
    task = make(name, **params, test_fraction=0.2)
    train = prompts_of([task.train_batch(s, 64) for s in range(150)])
    test = prompts_of(task.make_eval_set("id", 400))
    assert test and train.isdisjoint(test)
    members = alg.is_test_member
    assert all(members(torch.tensor([p]).numpy(), 0.2)[0] for p in test)
    assert not any(members(torch.tensor([p]).numpy(), 0.2)[0] for p in train)


def test_small_space_training_covers_every_non_test_prompt() -> None:
    # copy over 3 symbols at length 3: 27 prompts; training must reach all non-members,
    # so the disjointness above is not vacuous.
    task = make("copy", n_symbols=3, min_len=3, max_len=3, ood_min_len=4, ood_max_len=4)
    train = prompts_of([task.train_batch(s, 64) for s in range(40)])
    test = prompts_of(task.make_eval_set("id", 100))
    assert len(train) + len(test) == 27 and test


def test_eval_sets_have_no_duplicate_prompts() -> None:
    task = make("copy", n_symbols=2, min_len=4, max_len=10, ood_min_len=11, ood_max_len=12)
    for split in ("id", "ood"):
        batches = task.make_eval_set(split, 300)
        rows = [tuple(r) for b in batches for r in b.inputs.tolist()]
        assert len(rows) == len(set(rows))


@pytest.mark.parametrize("name", NAMES)
def test_lengths_of_splits(name: str) -> None:
    task = make(name)
    p = task.params
    seen_train = {task.train_batch(s, 4).group for s in range(200)}
    assert seen_train == set(range(p.min_len, p.max_len + 1))
    ood = task.make_eval_set("ood", 50)
    assert {b.group for b in ood} == set(range(p.ood_min_len, p.ood_max_len + 1))
    assert min(b.group for b in ood) > p.max_len
    longest = 0
    for b in [*ood, *task.make_eval_set("id", 50)]:
        assert b.inputs.shape[1] == task.input_len(b.group)
        assert b.padding_mask is None
        longest = max(longest, b.inputs.shape[1])
    assert longest == task.max_seq_len()


@pytest.mark.parametrize(
    ("name", "params"),
    [
        ("copy", {}),
        ("reverse", {}),
        ("sort", {"n_symbols": 5}),
        ("parity", {}),
        ("addition", {"format": "plain"}),
        ("addition", {"format": "reversed"}),
        ("addition", {"format": "reversed_answer"}),
    ],
)
def test_answers_are_correct(name: str, params: dict) -> None:
    task = make(name, **params)
    batches = [task.train_batch(s, 16) for s in range(5)]
    batches += task.make_eval_set("id", 40) + task.make_eval_set("ood", 40)
    for batch in batches:
        for row in full_rows(batch):
            prompt, answer = split_row(row)
            assert all(
                alg.FIRST_SYMBOL <= t < task.model_io()["vocab_size"]
                for t in row[1:-1]
                if t != alg.SEP
            )
            check_answer(task, prompt, answer)
            length = batch.group
            assert len(prompt) == (2 * length + 1 if name == "addition" else length)


@pytest.mark.parametrize(
    ("fmt", "prompt", "answer"),
    [
        ("plain", "128+367", "0495"),
        ("reversed", "821+763", "5940"),
        ("reversed_answer", "128+367", "5940"),
    ],
)
def test_addition_formats(fmt: str, prompt: str, answer: str) -> None:
    task = make("addition", format=fmt)
    raw = torch.tensor([[1, 2, 8, 3, 6, 7]]).numpy()
    p_tok, a_tok = task.render(raw, 3)

    def text(tokens: list[int]) -> str:
        return "".join("+" if t == alg.Addition.PLUS else str(t - alg.FIRST_SYMBOL) for t in tokens)

    assert text(p_tok[0].tolist()) == prompt and text(a_tok[0].tolist()) == answer


@pytest.mark.parametrize("name", NAMES)
def test_loss_mask_covers_answer_and_eos_only(name: str) -> None:
    task = make(name)
    for batch in [task.train_batch(0, 8), *task.make_eval_set("ood", 16)]:
        for inp, tgt, mask in zip(
            batch.inputs.tolist(), batch.targets.tolist(), batch.loss_mask.tolist()
        ):
            sep = inp.index(alg.SEP)
            assert mask == [t >= sep for t in range(len(inp))]
            assert tgt[-1] == alg.EOS and mask[-1]
            assert alg.SEP not in [t for t, m in zip(tgt, mask) if m]


@pytest.mark.parametrize("name", NAMES)
def test_score_perfect_wrong_and_partial(name: str) -> None:
    task = make(name)
    batches = task.make_eval_set("ood", 40)
    vocab = task.model_io()["vocab_size"]

    def logits(targets: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.one_hot(targets, vocab).float()

    perfect = task.score([logits(b.targets) for b in batches], batches)
    assert perfect["exact_match"] == 1.0 and perfect["token_accuracy"] == 1.0
    lengths = {str(b.group) for b in batches}
    assert set(perfect["by_length"]) == lengths
    assert all(v == 1.0 for v in perfect["by_length"].values())
    assert perfect["curve"]["x"] == "length" and perfect["curve"]["y"] == "exact_match"
    assert perfect["curve"]["series"]["model"] == perfect["by_length"]
    assert perfect["curve"]["n"] == {  # examples per point, for annotating points on few
        length: sum(int(b.inputs.shape[0]) for b in batches if str(b.group) == length)
        for length in perfect["by_length"]
    }
    # only parity's answer is a class: it alone carries baselines (and their series)
    assert ("baselines" in perfect) == (name == "parity")
    assert set(perfect["curve"]["series"]) == (
        {"model", "chance", "majority"} if name == "parity" else {"model"}
    )

    wrong = task.score([logits((b.targets + 1) % vocab) for b in batches], batches)
    assert wrong["exact_match"] == 0.0 and wrong["token_accuracy"] == 0.0

    # errors outside the loss mask (the prompt) do not count
    prompt_wrong = [
        logits(torch.where(b.loss_mask, b.targets, (b.targets + 1) % vocab)) for b in batches
    ]
    assert task.score(prompt_wrong, batches)["exact_match"] == 1.0

    # a wrong EOS in every other row: those rows are not exact, but token accuracy
    # counts answer tokens only, so it stays 1; eos_accuracy reports the EOS
    half = []
    for b in batches:
        t = b.targets.clone()
        t[::2, -1] = (t[::2, -1] + 1) % vocab
        half.append(logits(t))
    scores = task.score(half, batches)
    n_rows = sum(b.inputs.shape[0] for b in batches)
    n_bad = sum((b.inputs.shape[0] + 1) // 2 for b in batches)
    assert scores["exact_match"] == pytest.approx(1 - n_bad / n_rows)
    assert scores["token_accuracy"] == 1.0
    assert scores["eos_accuracy"] == pytest.approx(1 - n_bad / n_rows)
    assert perfect["eos_accuracy"] == 1.0 and wrong["eos_accuracy"] == 0.0
    # one wrong answer token (the last) in every other row: tokens mostly right
    last = []
    for b in batches:
        t = b.targets.clone()
        t[::2, -2] = (t[::2, -2] + 1) % vocab
        last.append(logits(t))
    scores = task.score(last, batches)
    answer_tokens = sum(int((b.loss_mask & (b.targets != alg.EOS)).sum()) for b in batches)
    assert scores["exact_match"] == pytest.approx(1 - n_bad / n_rows)
    assert scores["token_accuracy"] == pytest.approx(1 - n_bad / answer_tokens)
    assert scores["eos_accuracy"] == 1.0
    # predicted ids are accepted as well as logits
    ids = task.score([b.targets for b in batches], batches)
    assert ids["exact_match"] == 1.0


def test_model_io_and_vocab() -> None:
    assert make("copy", n_symbols=7).model_io() == {"embed": "tokens", "vocab_size": 11}
    assert make("parity").model_io()["vocab_size"] == 6
    assert make("addition").model_io()["vocab_size"] == 15


@pytest.mark.parametrize(
    ("name", "values", "needle"),
    [
        ("copy", {"min_len": 5, "max_len": 3}, "max_len=3 must be >= min_len=5"),
        ("copy", {"max_len": 12, "ood_min_len": 12}, "ood_min_len=12 must be > max_len=12"),
        (
            "copy",
            {"ood_min_len": 15, "ood_max_len": 14},
            "ood_max_len=14 must be >= ood_min_len=15",
        ),
        ("copy", {"min_len": 0}, "min_len=0"),
        ("copy", {"n_symbols": 1}, "n_symbols=1"),
        ("sort", {"test_fraction": 0.0}, "test_fraction=0.0"),
        ("reverse", {"test_fraction": 0.7}, "test_fraction=0.7"),
        ("addition", {"format": "backwards"}, "format='backwards'"),
        ("parity", {"n_symbols": 4}, "'parity' has no parameter 'n_symbols'"),
    ],
)
def test_bad_params_name_field_and_value(name: str, values: dict, needle: str) -> None:
    with pytest.raises(SpecError) as info:
        registry.get("task", name).make_params(values, where="task")
    assert needle in str(info.value)
    with pytest.raises((ValidationError, TypeError)):
        registry.get("task", name).params(**values)


def test_bad_eval_size_and_split() -> None:
    task = make("copy")
    with pytest.raises(ValueError, match="size=0"):
        task.make_eval_set("id", 0)
    with pytest.raises(ValueError, match="unknown split 'test'"):
        task.eval_set("test", 10)

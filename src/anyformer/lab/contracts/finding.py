"""Contract checks of the ``finding`` slot, the part that needs no training: the quick
comparisons are well formed and every variant of their grids is a valid experiment.
(Whether ``check`` gives a ``Verdict`` on results is tested with the findings.)"""

from __future__ import annotations

from anyformer.errors import SpecError
from anyformer.lab.contracts import CheckFailure, contract_check
from anyformer.registry import Entry

SLOT = "finding"


@contract_check(SLOT, "comparisons")
def comparisons(entry: Entry) -> None:
    """comparisons(quick=True) returns named comparisons whose every variant validates"""
    from anyformer.lab.compare import make_variants
    from anyformer.lab.findings.base import Comparison

    finding = entry.build()
    if not str(getattr(finding, "claim", "")).strip():
        raise CheckFailure("it states no claim (class attribute claim)")
    found = finding.comparisons(True)
    if not isinstance(found, dict) or not found:
        raise CheckFailure("comparisons(quick=True) returned no {name: Comparison} mapping")
    for name, comparison in found.items():
        if not isinstance(comparison, Comparison):
            raise CheckFailure(f"comparison '{name}' is a {type(comparison).__name__}")
        if comparison.seeds < 1:
            raise CheckFailure(f"comparison '{name}' has seeds={comparison.seeds}")
        try:
            variants = make_variants(comparison.spec(), comparison.axes, match_params=False)
        except SpecError as exc:
            raise CheckFailure(f"comparison '{name}': {exc}") from None
        if not variants:
            raise CheckFailure(f"comparison '{name}' has no variants")

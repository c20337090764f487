"""Integer helpers the compiled core uses instead of ``*`` and ``abs`` (:mod:`riskd.core.units`)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from riskd.core.units import magnitude, mul

# Around every boundary the helper switches on: mypyc's native factor range
# (2**30), the split range (2**60), the unboxed range (2**62) and int64.
EDGES = [0, 1, 2**30 - 1, 2**30, 2**31, 2**60 - 1, 2**60, 2**62 - 1, 2**62, 2**63, 2**64 + 5]
edge = st.sampled_from(EDGES).flatmap(lambda e: st.sampled_from([e, -e, e - 1, -e + 1]))
factor = st.one_of(edge, st.integers(-(2**70), 2**70), st.integers(-(2**31), 2**31))


@given(factor, factor)
def test_mul_is_exactly_the_product(a: int, b: int) -> None:
    assert mul(a, b) == a * b
    assert mul(b, a) == a * b


@given(factor)
def test_magnitude_is_abs(x: int) -> None:
    assert magnitude(x) == abs(x)

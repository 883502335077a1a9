"""The decision module: the publish threshold keeps the hard floor within floor_delta,
and what is published rests on the minimum and on a noisy count that reached it."""

from __future__ import annotations

import math
from decimal import Decimal

from hypothesis import given
from hypothesis import settings as hyp_settings
from hypothesis import strategies as st

from gateway.release import decide, noise
from gateway.release.plan import Plan


def _plan(epsilon: Decimal, groups: int, minimum: int, floor_delta: Decimal) -> Plan:
    plan = Plan(
        epsilon=epsilon,
        selection_delta=Decimal(0),
        floor_delta=floor_delta,
        groups_per_teacher=groups,
        dimensions=["band"],
        public_positions=[0],
        private_positions=[],
        public_combinations=[("a",), ("b",), ("c",)],
        minimum=minimum,
        students_per_teacher=1,
    )
    plan.counts = noise.integer_noise(groups, epsilon)
    return plan


EPSILONS = st.decimals(min_value=Decimal("0.01"), max_value=Decimal(20), places=2)
FLOOR_DELTAS = st.sampled_from(
    [Decimal("1e-12"), Decimal("1e-9"), Decimal("1e-6"), Decimal("1e-4")]
)


@hyp_settings(max_examples=200, deadline=None)
@given(
    epsilon=EPSILONS,
    groups=st.integers(1, 10),
    minimum=st.integers(3, 30),
    floor_delta=FLOOR_DELTAS,
)
def test_the_threshold_is_the_smallest_that_keeps_the_floor_within_floor_delta(
    epsilon: Decimal, groups: int, minimum: int, floor_delta: Decimal
) -> None:
    plan = _plan(epsilon, groups, minimum, floor_delta)
    tau = decide.publish_threshold(plan, None)
    assert plan.counts is not None
    per_cell = float(floor_delta) / (groups * (1 + math.exp(float(epsilon))))
    # A cell of minimum - 1 teachers reaches tau only with noise >= tau - (minimum - 1).
    reach = plan.counts.tail(tau - (minimum - 1))
    assert reach <= per_cell * (1 + 1e-9)
    # The g cells one teacher can move, both ways round: within floor_delta in total.
    assert groups * (1 + math.exp(float(epsilon))) * reach <= float(floor_delta) * (1 + 1e-9)
    if tau - 1 >= minimum:  # one lower would not do
        assert plan.counts.tail(tau - 1 - (minimum - 1)) > per_cell
    assert tau >= minimum


def test_a_profile_threshold_above_the_derived_one_wins() -> None:
    plan = _plan(Decimal(20), 1, 10, Decimal("1e-4"))
    derived = decide.publish_threshold(plan, None)
    assert decide.publish_threshold(plan, derived + 7) == derived + 7
    assert decide.publish_threshold(plan, 1) == derived


@hyp_settings(max_examples=300, deadline=None)
@given(
    cells=st.lists(st.tuples(st.integers(0, 40), st.integers(-20, 60)), min_size=3, max_size=3),
    tau=st.integers(10, 30),
)
def test_a_published_cell_rests_on_the_minimum_and_a_noisy_count_at_the_threshold(
    cells: list[tuple[int, int]], tau: int
) -> None:
    plan = _plan(Decimal(1), 1, 10, Decimal("1e-9"))
    plan.threshold = tau
    keys = plan.keys([()])
    true = {k: c[0] for k, c in zip(keys, cells, strict=True)}
    noisy = {k: float(c[1]) for k, c in zip(keys, cells, strict=True)}
    pattern = decide.decide(true, noisy, plan=plan, remembered=set())
    for key in keys:
        if key not in pattern.suppressed:
            assert true[key] >= plan.minimum and noisy[key] >= tau
        elif noisy[key] >= tau and true[key] >= plan.minimum:
            assert pattern.reason(key) == "complementary"  # hidden only to protect another
    # No line is left with a single hidden cell.
    assert len(pattern.suppressed) != 1


def test_labels_come_from_the_noisy_share() -> None:
    assert decide.share_label(0.049, coding=True) == "<5%"
    assert decide.share_label(0.951, coding=True) == ">95%"
    assert decide.share_label(0.5, coding=True) is None
    assert decide.share_label(0.01, coding=False) is None

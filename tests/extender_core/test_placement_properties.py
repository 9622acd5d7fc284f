"""Whatever the cluster looks like, a choice never takes more than a card has free."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from placement_kit import U, card, demand, node

from flexnpu.extender.core.model import NodeState, PodDemand
from flexnpu.extender.core.placement import POLICIES, NodeFit, choose, fit_node

cards = st.builds(
    lambda used, mem, model, healthy, index: card(index, used=used, memory_used=mem, model=model, healthy=healthy),
    st.integers(0, U),
    st.integers(0, 65536),
    st.sampled_from(["910B3", "910B4"]),
    st.booleans(),
    st.just(0),
)
nodes = st.lists(cards, min_size=0, max_size=8).map(
    lambda cs: node(
        "n",
        *(c.__class__(**{**c.__dict__, "uuid": f"npu-{i}", "index": i}) for i, c in enumerate(cs)),
        cpu_total=32000,
        cpu_used=16000,
    )
)
demands = st.builds(
    lambda units, memory, models, cpu: demand(units, memory, models, cpu),
    st.one_of(st.integers(1, U), st.sampled_from([2 * U, 4 * U, 8 * U])),
    st.one_of(st.none(), st.integers(1, 70000)),
    st.sampled_from([frozenset(), frozenset({"910B3"}), frozenset({"910B4", "910B3"})]),
    st.integers(0, 20000),
)


@settings(max_examples=150, deadline=None)
@given(nodes, demands, st.sampled_from(sorted(POLICIES)))
def test_a_choice_never_exceeds_free_units_or_memory(the_node: NodeState, the_demand: PodDemand, name: str) -> None:
    verdict = fit_node(the_demand, the_node)
    if not isinstance(verdict, NodeFit):
        return
    assignments = choose(the_demand, the_node, name)
    assert len(assignments) == the_demand.request.cards
    assert len({a.uuid for a in assignments}) == len(assignments)
    by_uuid = {c.uuid: c for c in the_node.cards}
    for a in assignments:
        chosen = by_uuid[a.uuid]
        assert chosen.healthy and the_demand.allows(chosen.model)
        assert a.units <= chosen.units_free
        assert a.memory_mib <= chosen.memory_free_mib
    after = the_node.with_assignments(assignments, the_demand.cpu_milli)
    assert all(c.units_free >= 0 and c.memory_free_mib >= 0 for c in after.cards)
    assert after.cpu_milli_free >= 0

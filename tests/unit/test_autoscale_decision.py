"""The autoscaler's decision, a pure function of a pool's figures, and where a kind's actors can go: no Ray."""

from __future__ import annotations

from dataclasses import replace

from server.autoscale import Decision, Figures, decide

BASE = Figures(unfinished=0, size=1, idle=1, least=1, most=4, per_actor=2, now=100.0, over_since=None,
               under_since=None, upscale_delay=1.0, downscale_delay=5.0)


def test_a_pool_with_work_for_its_actors_stays_as_it_is() -> None:
    assert decide(replace(BASE, unfinished=2, idle=0)) == Decision(target=1)


def test_it_grows_to_the_target_at_once_but_only_after_the_upscale_delay() -> None:
    busy = replace(BASE, unfinished=7, idle=0)
    assert decide(busy) == Decision(target=4, over_since=100.0), "too much work: the clock starts"
    assert decide(replace(busy, now=100.5, over_since=100.0)) == Decision(target=4, over_since=100.0)
    assert decide(replace(busy, now=101.0, over_since=100.0)) == Decision(target=4, grow=3)


def test_it_never_grows_past_its_most_nor_shrinks_below_its_least() -> None:
    assert decide(replace(BASE, unfinished=1000, now=200.0, over_since=100.0)).grow == 3
    assert decide(replace(BASE, unfinished=0, size=1, idle=1, now=200.0, under_since=100.0)) == Decision(target=1)


def test_it_shrinks_by_one_idle_actor_per_downscale_delay() -> None:
    quiet = replace(BASE, unfinished=1, size=3, idle=2)
    assert decide(quiet) == Decision(target=1, under_since=100.0)
    assert decide(replace(quiet, now=105.0, under_since=100.0)) == Decision(target=1, shrink=True, under_since=105.0)
    assert decide(replace(quiet, now=105.0, under_since=100.0, idle=0)) == Decision(target=1, under_since=100.0), \
        "never an actor that runs a job"


def test_a_change_of_mind_resets_the_other_clock() -> None:
    assert decide(replace(BASE, unfinished=7, under_since=90.0)).under_since is None
    assert decide(replace(BASE, size=3, idle=3, over_since=90.0)).over_since is None


def test_a_kind_is_placeable_when_one_node_has_all_it_asks() -> None:
    from server.pools import placement_problem

    cpu_only, gpu = {"CPU": 2.0, "memory": 8e9}, {"CPU": 8.0, "GPU": 1.0, "memory": 64e9}
    assert placement_problem("k", {}, [cpu_only]) is None
    assert placement_problem("k", {"GPU": 1.0}, [cpu_only, gpu]) is None
    assert placement_problem("k", {"GPU": 1.0, "memory": 32e9}, [cpu_only, gpu]) is None
    assert "1 GPU" in (placement_problem("k", {"GPU": 1.0}, [cpu_only]) or "")
    assert placement_problem("k", {"GPU": 1.0, "memory": 128e9}, [cpu_only, gpu]) is not None, "all on one node"

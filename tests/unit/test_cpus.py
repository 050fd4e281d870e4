"""Which CPU each verified run gets (sandbox/cpus.py): the least used, so that runs as many
as the CPUs each have one of their own."""

from __future__ import annotations

import pytest

from backtest_sandbox.sandbox.cpus import CpuSlots


def test_each_run_takes_the_least_used_cpu_and_gives_it_back() -> None:
    slots = CpuSlots([0, 1])
    with slots.take() as first, slots.take() as second:
        assert {first, second} == {0, 1}  # two runs, two CPUs
        with slots.take() as third:
            assert third == 0  # a third shares, the lowest first
        with slots.take() as again:
            assert again == 0  # given back: 0 is the least used again
    with slots.take() as alone:
        assert alone == 0


def test_a_run_that_raises_gives_its_cpu_back() -> None:
    slots = CpuSlots([3, 5])
    with pytest.raises(RuntimeError), slots.take():
        raise RuntimeError
    with slots.take() as cpu, slots.take() as other:
        assert (cpu, other) == (3, 5)

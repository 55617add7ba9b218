"""The ingest memory budget: reservations add up to at most the total, FIFO, bounded waits."""

from __future__ import annotations

import asyncio

import pytest

from services.gateway.admission import BudgetExhausted, MemoryBudget, request_cost


async def test_reservations_never_exceed_the_total_and_are_served_in_order() -> None:
    budget = MemoryBudget(100)
    peak = 0
    order: list[int] = []

    async def work(index: int, amount: int) -> None:
        nonlocal peak
        async with budget.reserve(amount, timeout_s=5):
            peak = max(peak, budget.used)
            order.append(index)
            await asyncio.sleep(0.01)

    await asyncio.gather(*(work(i, amount) for i, amount in enumerate([60, 60, 30, 100, 10, 40])))
    assert peak <= 100
    assert order == [0, 1, 2, 3, 4, 5]  # a large reservation is not overtaken by small ones
    assert budget.used == 0


async def test_a_wait_that_times_out_is_503_material_and_gives_nothing_away() -> None:
    budget = MemoryBudget(100)
    async with budget.reserve(80, timeout_s=1):
        with pytest.raises(BudgetExhausted):
            async with budget.reserve(50, timeout_s=0.05):
                pass
        assert budget.used == 80
        # The abandoned wait does not block a smaller request that fits.
        async with budget.reserve(20, timeout_s=0.05):
            assert budget.used == 100
    assert budget.used == 0


async def test_a_cancelled_waiter_leaves_the_budget_whole() -> None:
    budget = MemoryBudget(100)
    async with budget.reserve(100, timeout_s=1):
        waiter = asyncio.create_task(budget.reserve(10, timeout_s=5).__aenter__())
        await asyncio.sleep(0.01)
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
    assert budget.used == 0
    async with budget.reserve(100, timeout_s=0.05):
        assert budget.used == 100


def test_the_default_settings_keep_concurrent_maximum_requests_under_the_pod_limit() -> None:
    from services.gateway.settings import GatewaySettings

    settings = GatewaySettings()
    one = request_cost(settings.max_request_bytes)
    budget = settings.ingest_memory_budget_mb * 2**20
    assert one <= budget
    # The budget plus the process's own footprint (about 150 MiB measured for the gateway with
    # the processor inside it) stays under the 512 Mi limit of the Kubernetes manifests.
    assert budget + 150 * 2**20 <= 512 * 2**20
    with pytest.raises(ValueError, match="cannot hold one request"):
        GatewaySettings(MAX_REQUEST_BYTES=16 * 2**20, INGEST_MEMORY_BUDGET_MB=256)

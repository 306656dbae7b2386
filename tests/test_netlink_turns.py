"""The netlink layer hands the event loop a turn during long dumps and write batches."""

from __future__ import annotations

import asyncio

from mhd.netlink import GenlSocket


def test_a_long_run_of_netlink_requests_lets_the_loop_run() -> None:
    """Regression (issue 15): the kernel answers inside sendmsg, so no await in a dump ever waited,
    and a periodic pass at 16,000 destinations held the loop 15-38 s under emulation (probes, API
    and SIGHUP all waited). Here: generic netlink's own family, looked up over and over."""

    async def scenario() -> tuple[int, int]:
        sock = GenlSocket()
        turns = 0
        done = False

        async def ticker() -> None:
            nonlocal turns
            while not done:
                turns += 1
                await asyncio.sleep(0)

        task = asyncio.create_task(ticker())
        await asyncio.sleep(0)
        before = turns
        try:
            for _ in range(3000):
                assert await sock.family_id("nlctrl") == 0x10
        finally:
            done = True
            await task
            sock.close()
        return before, turns

    before, after = asyncio.run(scenario())
    assert after - before >= 3  # 3,000 requests take several 5 ms slices; before the fix: 0

"""The node-daemon adapter against a real flexnpud: our errors, never aiohttp's, and the daemon's reasons kept."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest

from flexnpu.operator.daemon_client import DaemonClient, DaemonRefused, DaemonUnreachable, with_retries
from flexnpu.registration import Registration
from flexnpu_testsupport.operatorkit import DaemonProcess
from flexnpu_testsupport.waiting import free_port

BODY = Registration(flexnpu_id="vnc.t.a", entity="a", npu=0, aicore_alloc=6, memory_alloc=1024)


@pytest.fixture
async def client() -> AsyncIterator[DaemonClient]:
    async with aiohttp.ClientSession() as session:
        yield DaemonClient(session, token=lambda: "", timeout=2.0)


async def test_register_is_idempotent_and_listed(client: DaemonClient, node: DaemonProcess) -> None:
    await client.register(node.url, BODY)
    await client.register(node.url, BODY)
    assert (await client.registrations(node.url)) == {BODY.flexnpu_id: BODY}
    assert await client.unregister(node.url, BODY.flexnpu_id) is True
    assert await client.unregister(node.url, BODY.flexnpu_id) is False


async def test_refusals_keep_the_daemons_reason_and_field(client: DaemonClient, node: DaemonProcess) -> None:
    await client.register(node.url, BODY)
    with pytest.raises(DaemonRefused) as full:
        await client.register(
            node.url, Registration(flexnpu_id="vnc.t.b", entity="b", npu=0, aicore_alloc=6, memory_alloc=1)
        )
    assert full.value.status == 409 and "does not fit" in full.value.message
    with pytest.raises(DaemonRefused) as bad:
        await client.register(
            node.url, Registration(flexnpu_id="vnc.t.c", entity="c", npu=40, aicore_alloc=1, memory_alloc=1)
        )
    assert (bad.value.status, bad.value.field) == (400, "npu")


async def test_an_unreachable_daemon_is_our_error_after_the_retries(client: DaemonClient) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    calls = 0

    async def call() -> object:
        nonlocal calls
        calls += 1
        return await client.health(url)

    with pytest.raises(DaemonUnreachable) as caught:
        await with_retries(call, attempts=3, base=0.001, cap=0.01)
    assert calls == 3
    assert not isinstance(caught.value, aiohttp.ClientError)
    assert isinstance(caught.value.__cause__, aiohttp.ClientError | OSError)

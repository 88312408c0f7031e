"""SMTP inbound: messages/s from concurrent loopback clients into fsynced Maildirs.

The client is a lean asyncio SMTP speaker (pipelined MAIL/RCPT/DATA, one message per
connection, as MX traffic arrives), so it takes as little of the CPU as it can from the server.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from pathlib import Path

from tests.support.dnsserver import DEFAULT_ZONE, DNSTestServer
from tests.support.instance import Instance

BODY = (b"From: bench@remote.test\r\nTo: bench@example.test\r\nSubject: bench\r\n\r\n"
        + (b"x" * 76 + b"\r\n") * 64)  # ~5 KB


async def _reply(reader: asyncio.StreamReader) -> int:
    while True:
        line = await reader.readline()
        if line[3:4] != b"-":
            return int(line[:3])


async def _send_one(port: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    assert await _reply(reader) == 220
    writer.write(b"EHLO bench.remote.test\r\n")
    assert await _reply(reader) == 250
    writer.write(b"MAIL FROM:<bench@remote.test>\r\nRCPT TO:<bench@example.test>\r\nDATA\r\n")
    codes = [await _reply(reader) for _ in range(3)]
    assert codes == [250, 250, 354], codes
    writer.write(BODY + b".\r\nQUIT\r\n")
    code = await _reply(reader)
    assert code == 250, code
    await _reply(reader)
    writer.close()
    await writer.wait_closed()


async def _drive(port: int, messages: int, sessions: int) -> float:
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(messages):
        queue.put_nowait(i)

    async def session() -> None:
        while not queue.empty():
            queue.get_nowait()
            await _send_one(port)

    started = time.monotonic()
    await asyncio.gather(*(session() for _ in range(sessions)))
    return messages / (time.monotonic() - started)


def measure(messages: int, sessions: int) -> float:
    with DNSTestServer(DEFAULT_ZONE) as dns, tempfile.TemporaryDirectory(
            dir=Path.cwd(), prefix=".bench-smtp-") as root:
        inst = Instance(Path(root), dns.nameserver)
        inst.add_user("bench@example.test")
        inst.start()
        try:
            rate = asyncio.run(_drive(inst.mx_port, messages, sessions))
            stored = len(list((inst.data_dir / "mail/example.test/bench/new").iterdir()))
            assert stored == messages, (stored, messages)
        finally:
            inst.stop()
        return rate

"""Submission -> outbound queue -> remote MX: messages/s until ``smtp-sink`` has them all.

The same asyncio client drives both servers: S sessions, each one connection (STARTTLS,
then AUTH PLAIN for mailstead) over which it submits its share of the N messages back to
back, MAIL/RCPT/DATA pipelined. The figure is N divided by the time from the first connect
until ``smtp-sink`` (the remote MX: ``remote.test`` resolves to it for mailstead through the
test DNS zone and ``[outbound] mx_port``; Postfix has it as ``relayhost``) has counted the
N-th message, so it covers accepting, queueing (fsynced by both) and relaying.

Not the same work: mailstead DKIM-signs every message (RSA-2048) and looks up the MX and
MTA-STS of ``remote.test`` in DNS; the Postfix anchor signs nothing, uses no DNS (a fixed
``relayhost``), and takes mail from loopback without AUTH (it would need a SASL server).
"""

from __future__ import annotations

import asyncio
import base64
import shutil
import ssl
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

from bench.instance import SENDER, Mailstead
from bench.postfix import SMTPSink, relay_postfix
from bench.report import Row

RCPT = "someone@remote.test"
TIMEOUT = 900


def message(i: int) -> bytes:
    head = (f"From: Bench Sender <{SENDER}>\r\nTo: <{RCPT}>\r\nSubject: submission {i}\r\n"
            f"Date: Sat, 28 Nov 2026 12:00:00 +0000\r\nMessage-ID: <sub{i}@example.test>\r\n"
            "\r\n")
    return head.encode() + (b"y" * 76 + b"\r\n") * 64


async def _reply(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    lines = b""
    while True:
        line = await reader.readline()
        if not line:
            raise ConnectionError("server closed the connection")
        lines += line
        if line[3:4] != b"-":
            return int(line[:3]), lines


async def _expect(reader: asyncio.StreamReader, code: int) -> None:
    got, text = await _reply(reader)
    if got != code:
        raise RuntimeError(f"expected {code}, got {text!r}")


async def _session(port: int, numbers: list[int], auth: tuple[str, str] | None) -> None:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    await _expect(reader, 220)
    writer.write(b"EHLO laptop.example.test\r\n")
    await _expect(reader, 250)
    writer.write(b"STARTTLS\r\n")
    await _expect(reader, 220)
    await writer.start_tls(ctx)
    writer.write(b"EHLO laptop.example.test\r\n")
    await _expect(reader, 250)
    if auth:
        token = base64.b64encode(f"\0{auth[0]}\0{auth[1]}".encode()).decode()
        writer.write(f"AUTH PLAIN {token}\r\n".encode())
        await _expect(reader, 235)
    for i in numbers:
        writer.write(f"MAIL FROM:<{SENDER}>\r\nRCPT TO:<{RCPT}>\r\nDATA\r\n".encode())
        for code in (250, 250, 354):
            await _expect(reader, code)
        writer.write(message(i) + b".\r\n")
        await _expect(reader, 250)
    writer.write(b"QUIT\r\n")
    await _reply(reader)
    writer.close()


async def _submit(port: int, messages: int, sessions: int,
                  auth: tuple[str, str] | None) -> None:
    shares = [list(range(s, messages, sessions)) for s in range(sessions)]
    await asyncio.gather(*(_session(port, share, auth) for share in shares if share))


def drive(port: int, sink: SMTPSink, messages: int, sessions: int,
          auth: tuple[str, str] | None) -> float:
    base = sink.received
    started = time.monotonic()
    asyncio.run(_submit(port, messages, sessions, auth))
    if not sink.wait_for(base + messages, TIMEOUT):
        raise RuntimeError(f"smtp-sink got {sink.received - base} of {messages} messages")
    return messages / (time.monotonic() - started)


def measure(messages: int, sessions: int, details: dict) -> list[Row]:
    tmp = Path(tempfile.mkdtemp(prefix="mailstead-bench-submission-"))
    with ExitStack() as stack:
        stack.callback(shutil.rmtree, tmp, ignore_errors=True)
        sink = stack.enter_context(SMTPSink(tmp / "sink"))
        ms = Mailstead(tmp / "mailstead", users=(SENDER,),
                       extra={"outbound": {"mx_port": sink.port}})
        stack.callback(ms.close)
        ms.start()
        postfix = relay_postfix(tmp / "postfix", sink.port)
        stack.callback(postfix.stop)
        postfix.start()
        auth = (SENDER, ms.password)
        warm = min(100, max(20, messages // 10))
        drive(ms.port("submission"), sink, warm, min(sessions, 5), auth)
        drive(postfix.port, sink, warm, min(sessions, 5), None)
        rate = {"mailstead": drive(ms.port("submission"), sink, messages, sessions, auth),
                "postfix": drive(postfix.port, sink, messages, sessions, None)}
        print(f"  submission {sessions} sessions: { {k: round(v, 1) for k, v in rate.items()} }",
              flush=True)
        details["submission"] = {"messages": messages, "sessions": sessions,
                                 "msg_per_s": {k: round(v, 1) for k, v in rate.items()}}
    return [Row("submission", f"Submission -> queue -> smtp-sink, {sessions} sessions", "msg/s",
                rate["mailstead"], "Postfix relay", rate["postfix"], True)]

"""A TCP proxy between the workers and Redis that chaos can partition, slow down or reset.

The issue's first choice, network namespaces with ``tc netem``, cannot run here: the kernel has no
``sch_netem`` ("Specified qdisc kind is unknown"). A userspace proxy needs nothing from the kernel and acts
on exactly the connections that matter, the workers' (the lab, the API and the chaos ledger connect
directly):

- ``partition``: bytes stop flowing both ways and new connections are accepted but not carried through,
  as when packets are dropped: the peers see silence, not an error, and whatever was in flight arrives once
  the partition heals (TCP retransmits), unless a peer gave up first.
- ``latency_ms``: every chunk is held this long before it is forwarded.
- ``reset``: every open connection is aborted with a TCP RST, as when a middlebox or the broker's host drops
  them; clients see "connection reset" and reconnect.

Control over HTTP (JSON): ``GET /health``, ``GET /state``, ``POST /partition {"on": bool}``,
``POST /latency {"ms": N}``, ``POST /reset`` (returns how many connections were reset).

    python -m lab.netproxy --port 7001 --upstream 127.0.0.1:6379 --control-port 7002
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import socket
import struct
from typing import Any

import httpx
import uvicorn
from fastapi import FastAPI
from pydantic import BaseModel, Field

CHUNK = 65536


class Proxy:
    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.flowing = asyncio.Event()
        self.flowing.set()
        self.latency_s = 0.0
        self.open: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = set()
        self.stats = {"connections": 0, "reset": 0, "bytes": 0, "partitions": 0}

    def state(self) -> dict[str, Any]:
        return {
            "partitioned": not self.flowing.is_set(),
            "latency_ms": round(self.latency_s * 1000, 3),
            "open_connections": len(self.open),
            **self.stats,
        }

    async def handle(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        self.stats["connections"] += 1
        try:
            await self.flowing.wait()  # a partition lets the connection open but carries nothing through
            up_r, up_w = await asyncio.open_connection(*self.upstream)
        except OSError:
            client_w.close()
            return
        pair = (client_w, up_w)
        self.open.add(pair)
        try:
            await asyncio.gather(self._pump(client_r, up_w), self._pump(up_r, client_w), return_exceptions=True)
        finally:
            self.open.discard(pair)
            for w in pair:
                w.close()

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(CHUNK):
            await self.flowing.wait()
            if self.latency_s:
                await asyncio.sleep(self.latency_s)  # the injected latency itself
            writer.write(data)
            await writer.drain()
            self.stats["bytes"] += len(data)
        with contextlib.suppress(OSError, RuntimeError):
            writer.write_eof()  # pass the half-close on

    def partition(self, on: bool) -> None:
        if on and self.flowing.is_set():
            self.stats["partitions"] += 1
            self.flowing.clear()
        elif not on:
            self.flowing.set()

    def reset(self) -> int:
        n = 0
        for pair in list(self.open):
            for w in pair:
                sock = w.get_extra_info("socket")
                if sock is not None:
                    with contextlib.suppress(OSError):
                        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # RST
                w.transport.abort()
            n += 1
        self.stats["reset"] += n
        return n


class PartitionIn(BaseModel):
    on: bool


class LatencyIn(BaseModel):
    ms: float = Field(ge=0, le=60_000)


def control_app(proxy: Proxy) -> FastAPI:
    api = FastAPI(title="lab network proxy")

    @api.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    @api.get("/state")
    def state() -> dict[str, Any]:
        return proxy.state()

    @api.post("/partition")
    def partition(body: PartitionIn) -> dict[str, Any]:
        proxy.partition(body.on)
        return proxy.state()

    @api.post("/latency")
    def latency(body: LatencyIn) -> dict[str, Any]:
        proxy.latency_s = body.ms / 1000
        return proxy.state()

    @api.post("/reset")
    def reset() -> dict[str, Any]:
        return {"reset": proxy.reset(), **proxy.state()}

    return api


async def serve(host: str, port: int, upstream: tuple[str, int], control_port: int) -> None:
    proxy = Proxy(*upstream)
    server = await asyncio.start_server(proxy.handle, host, port)
    config = uvicorn.Config(control_app(proxy), host=host, port=control_port, log_level="warning", loop="asyncio")
    async with server:  # serving from start_server on; uvicorn's serve() returns on SIGTERM or SIGINT
        await uvicorn.Server(config).serve()


class NetProxyClient:
    """The proxy's control API: ``partition`` (on=bool), ``latency`` (ms=N), ``reset``, ``state``."""

    def __init__(self, url: str) -> None:
        self.url = url.rstrip("/")

    def call(self, action: str, **body: Any) -> dict[str, Any]:
        url = f"{self.url}/{action}"
        resp = httpx.get(url, timeout=5) if action == "state" else httpx.post(url, json=body or None, timeout=5)
        resp.raise_for_status()
        return dict(resp.json())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m lab.netproxy", description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True, help="Where clients connect.")
    parser.add_argument("--upstream", required=True, help="HOST:PORT the proxy forwards to.")
    parser.add_argument("--control-port", type=int, required=True, help="HTTP control API port.")
    args = parser.parse_args(argv)
    host, _, port = args.upstream.rpartition(":")
    if not host or not port.isdigit():
        parser.error(f"--upstream {args.upstream!r}: expected HOST:PORT, e.g. 127.0.0.1:6379")
    asyncio.run(serve(args.host, args.port, (host, int(port)), args.control_port))


if __name__ == "__main__":
    main()

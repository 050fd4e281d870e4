"""MCP client helpers shared by the tests that drive the server with the official mcp client."""

from __future__ import annotations

import json
import socket
import subprocess
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx2
from mcp.client import Client
from mcp.client.streamable_http import streamable_http_client
from mcp_types import TextContent


@asynccontextmanager
async def connect_http(url: str, token: str, read_timeout_seconds: float) -> AsyncIterator[Client]:
    """A client over streamable HTTP that sends `Authorization: Bearer <token>`."""
    async with (
        httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"}) as http,
        Client(
            streamable_http_client(url, http_client=http),
            read_timeout_seconds=read_timeout_seconds,
        ) as client,
    ):
        yield client


async def call(
    client: Client, tool: str, *, text_matches: bool = False, **arguments: Any
) -> dict[str, Any]:
    """A tool's structured result, which must not be an error. With `text_matches`, the first
    content block must also be text holding the same object, for clients that read only text."""
    result = await client.call_tool(tool, arguments)
    assert not result.is_error, result.content
    assert result.structured_content is not None
    if text_matches:
        first = result.content[0]
        assert isinstance(first, TextContent)
        assert json.loads(first.text) == result.structured_content
    return dict(result.structured_content)


async def error(client: Client, tool: str, **arguments: Any) -> str:
    """A tool error's message."""
    result = await client.call_tool(tool, arguments)
    assert result.is_error
    (content,) = result.content
    assert isinstance(content, TextContent)
    return content.text


def wait_until_listening(process: subprocess.Popen[bytes], port: int, timeout: float = 60) -> bool:
    """True once something accepts connections on 127.0.0.1:port; False if `process` exits
    first or `timeout` seconds pass."""
    deadline = time.monotonic() + timeout
    while process.poll() is None and time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return True
        except OSError:
            time.sleep(0.1)
    return False

"""Drives `huddle mcp` with the Python MCP SDK (PyPI `mcp`, 2.x), as an agent's client would.

Usage: drive.py SCENARIO --huddle BIN --dir DIR [--url URL] [--token TOKEN]

Each scenario asserts what it proves and prints `PASS SCENARIO` last; any
failure raises (non-zero exit, traceback on stderr). tests/it/mcp.rs runs
each scenario against a fresh huddle directory, with a deadline.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import subprocess
import sys
import time
from contextlib import asynccontextmanager
from pathlib import Path

import httpx2
from mcp.client.client import Client
from mcp.client.stdio import StdioServerParameters
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError

TOOLS = {"log", "next", "ack", "wait", "read", "heartbeat", "status"}
COMMUNICATION = "huddle://communication.md"

args: argparse.Namespace


def stdio(*extra: str) -> StdioServerParameters:
    return StdioServerParameters(
        command=args.huddle,
        args=["mcp", "--dir", args.dir, *extra],
        env=dict(os.environ),
    )


def http_transport(url: str, token: str | None = None):
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return streamable_http_client(url, http_client=httpx2.AsyncClient(headers=headers, timeout=30))


@asynccontextmanager
async def connect(*extra: str, url: str | None = None, token: str | None = None, mode: str = "auto"):
    server = http_transport(url, token) if url else stdio(*extra)
    async with Client(server, mode=mode, cache=None) as client:
        yield client


def cli(*argv: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [args.huddle, *argv, "--dir", args.dir], input=stdin, capture_output=True, text=True, timeout=30
    )


def cli_error(*argv: str) -> str:
    """The message `huddle` prints for a refused command, without its `huddle: ` prefix."""
    out = cli(*argv)
    assert out.returncode == 2, (argv, out.returncode, out.stderr)
    line = out.stderr.strip()
    assert line.startswith("huddle: "), line
    return line[len("huddle: ") :]


def log_bytes() -> bytes:
    return (Path(args.dir) / "events.log").read_bytes()


def log_events() -> list[dict]:
    return [json.loads(line) for line in log_bytes().decode().splitlines() if line.strip()]


async def ok(client: Client, tool: str, arguments: dict) -> dict:
    result = await client.call_tool(tool, arguments)
    assert not result.is_error, (tool, arguments, result.content)
    assert isinstance(result.structured_content, dict), result
    # The text content carries the same answer, for clients that read only text.
    assert json.loads(result.content[0].text) == result.structured_content
    return result.structured_content


async def refused(client: Client, tool: str, arguments: dict) -> str:
    """Calls a tool that must refuse: a tool error, and nothing written."""
    before = log_bytes()
    result = await client.call_tool(tool, arguments)
    assert result.is_error, (tool, arguments, result)
    assert log_bytes() == before, f"{tool} {arguments} wrote to the log"
    return result.content[0].text


# --- scenarios ---------------------------------------------------------------------------


async def schemas() -> None:
    async with connect() as client:
        assert client.server_info.name == "huddle", client.server_info
        tools = {tool.name: tool for tool in (await client.list_tools()).tools}
        assert set(tools) == TOOLS, sorted(tools)
        required = {
            "log": {"interaction", "actor", "type", "content"},
            "next": {"agent"},
            "ack": {"agent", "interaction"},
            "wait": {"agent", "timeout_ms"},
            "read": set(),
            "heartbeat": {"actor"},
            "status": set(),
        }
        properties = {
            "log": {"interaction", "actor", "type", "content"},
            "next": {"agent", "limit"},
            "ack": {"agent", "interaction"},
            "wait": {"agent", "timeout_ms"},
            "read": {"from_interaction", "to_interaction", "types", "actor", "text", "limit"},
            "heartbeat": {"actor"},
            "status": set(),
        }
        for name, tool in tools.items():
            schema = tool.input_schema
            assert len(tool.description or "") > 40, (name, tool.description)
            assert schema["type"] == "object", (name, schema)
            assert set(schema.get("required", [])) == required[name], (name, schema)
            assert set(schema["properties"]) == properties[name], (name, schema)
            assert schema.get("additionalProperties") is False, (name, schema)
        interaction = tools["log"].input_schema["properties"]["interaction"]
        kinds = {alt.get("type") for alt in interaction["oneOf"]}
        assert kinds == {"integer", "string"}, interaction
        assert {"enum": ["next"], "type": "string"} in interaction["oneOf"], interaction
        assert tools["log"].input_schema["properties"]["type"]["pattern"] == "^[a-z][a-z0-9_-]*$"
        assert tools["wait"].input_schema["properties"]["timeout_ms"]["maximum"] == 60000
        assert tools["read"].input_schema["properties"]["types"]["type"] == "array"
    async with connect("--actor", "alice") as client:
        tools = {tool.name: tool for tool in (await client.list_tools()).tools}
        # A pinned server fills in its speaker: the field may be left out.
        assert set(tools["log"].input_schema["required"]) == {"interaction", "type", "content"}
        assert "alice" in tools["log"].input_schema["properties"]["actor"]["description"]
        assert tools["ack"].input_schema["required"] == ["interaction"]


async def tools_happy() -> None:
    async with connect() as client:
        first = await ok(client, "log", {"interaction": "next", "actor": "Agent A", "type": "question", "content": "Who builds the MCP server?\nline two"})
        assert first["interaction"] == 1 and first["actor"] == "Agent A" and first["type"] == "question", first
        assert len(first["id"]) == 36 and first["timestamp"].endswith("Z"), first
        reply = await ok(client, "log", {"interaction": 1, "actor": "Agent B", "type": "answer", "content": "I do."})
        assert reply["interaction"] == 1, reply
        second = await ok(client, "log", {"interaction": "next", "actor": "Agent B", "type": "decision", "content": "Ship it."})
        assert second["interaction"] == 2, second
        beat = await ok(client, "heartbeat", {"actor": "Agent B"})
        assert beat["type"] == "heartbeat" and beat["actor"] == "Agent B", beat
        # The log holds exactly what the tools said they wrote.
        assert [e["id"] for e in log_events()] == [first["id"], reply["id"], second["id"], beat["id"]]

        unread = await ok(client, "next", {"agent": "agent-a"})
        assert unread["after"] is None and unread["more"] is False, unread
        # Hidden types (the heartbeat) are left out.
        assert [e["id"] for e in unread["events"]] == [first["id"], reply["id"], second["id"]], unread
        limited = await ok(client, "next", {"agent": "agent-a", "limit": 2})
        assert len(limited["events"]) == 2 and limited["more"] is True, limited
        acked = await ok(client, "ack", {"agent": "agent-a", "interaction": 1})
        assert acked == {"agent": "agent-a", "checkpoint": 1}, acked
        after = await ok(client, "next", {"agent": "agent-a"})
        assert after["after"] == 1 and [e["id"] for e in after["events"]] == [second["id"]], after
        # The CLI sees the same checkpoint.
        out = cli("next", "--agent", "agent-a", "--json")
        assert [json.loads(l)["id"] for l in out.stdout.splitlines()] == [second["id"]], out

        found = await ok(client, "read", {})
        assert [e["id"] for e in found["events"]] == [first["id"], reply["id"], second["id"]], found
        found = await ok(client, "read", {"from_interaction": 2})
        assert [e["id"] for e in found["events"]] == [second["id"]], found
        found = await ok(client, "read", {"to_interaction": 1, "actor": "Agent B"})
        assert [e["id"] for e in found["events"]] == [reply["id"]], found
        found = await ok(client, "read", {"types": ["heartbeat"]})
        assert [e["id"] for e in found["events"]] == [beat["id"]], found
        found = await ok(client, "read", {"text": "MCP server"})
        assert [e["id"] for e in found["events"]] == [first["id"]], found
        found = await ok(client, "read", {"limit": 1})
        assert [e["id"] for e in found["events"]] == [first["id"]] and found["more"] is True, found

        waited = await ok(client, "wait", {"agent": "agent-a", "timeout_ms": 5000})
        assert [e["id"] for e in waited["events"]] == [second["id"]] and waited["timed_out"] is False, waited

        status = await ok(client, "status", {})
        expected = json.loads(cli("status", "--json").stdout)
        assert status.keys() == expected.keys(), (status, expected)
        assert status["events"] == expected["events"] == 4, (status, expected)
        assert {a["actor"] for a in status["actors"]} == {"Agent A", "Agent B"}, status

        # An answer to an older interaction, after a newer one: still found
        # by a read from that interaction (the index only says where to start).
        late = await ok(client, "log", {"interaction": 1, "actor": "Agent C", "type": "answer", "content": "Late."})
        found = await ok(client, "read", {"from_interaction": 1, "to_interaction": 1})
        assert [e["id"] for e in found["events"]] == [first["id"], reply["id"], late["id"]], found
        found = await ok(client, "read", {"from_interaction": 2})
        assert [e["id"] for e in found["events"]] == [second["id"]], found


async def bad_input() -> None:
    cli("log", "1", "Agent A", "question", "before")
    async with connect() as client:
        # The CLI's own words, for the same bad values.
        same_as_cli = [
            ({"interaction": 1, "actor": "A", "type": "Bad Type", "content": "x"}, ("log", "1", "A", "Bad Type", "x")),
            ({"interaction": 1, "actor": "", "type": "note", "content": "x"}, ("log", "1", "", "note", "x")),
            ({"interaction": 1, "actor": "a\u0007b", "type": "note", "content": "x"}, ("log", "1", "a\u0007b", "note", "x")),
            ({"interaction": -1, "actor": "A", "type": "note", "content": "x"}, ("log", "-1", "A", "note", "x")),
            ({"interaction": 1.5, "actor": "A", "type": "note", "content": "x"}, ("log", "1.5", "A", "note", "x")),
            ({"interaction": "abc", "actor": "A", "type": "note", "content": "x"}, ("log", "abc", "A", "note", "x")),
            ({"interaction": 2**53, "actor": "A", "type": "note", "content": "x"}, ("log", str(2**53), "A", "note", "x")),
            ({"interaction": 1, "actor": "A", "type": "note", "content": "x" * (1024 * 1024 + 1)}, None),
        ]
        for arguments, argv in same_as_cli:
            message = await refused(client, "log", arguments)
            if argv is not None:
                assert message == cli_error(*argv), (message, argv)
            else:
                assert "content" in message and "1048576" in message, message
        for tool, arguments, argv in [
            ("next", {"agent": "../escape"}, ("next", "--agent", "../escape")),
            ("ack", {"agent": "../escape", "interaction": 1}, ("ack", "--agent", "../escape", "1")),
            ("wait", {"agent": "../escape", "timeout_ms": 10}, ("next", "--agent", "../escape")),
            ("heartbeat", {"actor": ""}, ("heartbeat", "")),
        ]:
            assert await refused(client, tool, arguments) == cli_error(*argv), (tool, arguments)
        # What the CLI cannot be asked: each names the field and the limit.
        for tool, arguments, words in [
            ("log", {"actor": "A", "type": "note", "content": "x"}, "invalid interaction: is required"),
            ("log", {"interaction": 1, "actor": 5, "type": "note", "content": "x"}, "invalid actor: must be a string, got 5"),
            ("log", {"interaction": 1, "actor": "A", "type": "note", "content": "x", "actr": "B"}, 'unknown field "actr"'),
            ("next", {"agent": "a", "limit": 0}, "invalid limit: is 0, must be 1 to 10000"),
            ("ack", {"agent": "a", "interaction": -1}, "invalid interaction: must be a non-negative integer, got -1"),
            ("ack", {"agent": "a", "interaction": 2**53}, "over the limit of 9007199254740991"),
            ("wait", {"agent": "a", "timeout_ms": 60001}, "invalid timeout_ms: is 60001, over the limit of 60000"),
            ("read", {"from_interaction": 5, "to_interaction": 2}, "invalid to_interaction: is 2, below from_interaction 5"),
            ("read", {"types": ["Bad"]}, "invalid type"),
            ("read", {"types": "note"}, "invalid types: must be a list of strings"),
            ("read", {"limit": 10001}, "invalid limit: is 10001, must be 1 to 10000"),
            ("status", {"verbose": True}, 'unknown field "verbose"; this tool takes none'),
        ]:
            message = await refused(client, tool, arguments)
            assert words in message, (tool, arguments, message)
        # An unknown tool is a protocol error; the server carries on.
        try:
            await client.call_tool("erase", {})
            raise AssertionError("an unknown tool was accepted")
        except MCPError as error:
            assert "unknown tool" in str(error), error
        # Still serving, and nothing was written by any of it.
        events = log_events()
        assert [e["content"] for e in events] == ["before"], events
        assert (await ok(client, "log", {"interaction": 1, "actor": "A", "type": "note", "content": "after"}))["interaction"] == 1


async def pinned() -> None:
    async with connect("--actor", "alice") as client:
        message = await refused(client, "log", {"interaction": "next", "actor": "bob", "type": "note", "content": "x"})
        assert message == 'invalid actor: this server speaks only for "alice" (huddle mcp --actor); it cannot act as "bob"', message
        assert "alice" in await refused(client, "heartbeat", {"actor": "bob"})
        assert "alice" in await refused(client, "ack", {"agent": "bob", "interaction": 1})
        written = await ok(client, "log", {"interaction": "next", "type": "note", "content": "mine"})
        assert written["actor"] == "alice", written
        assert (await ok(client, "log", {"interaction": 1, "actor": "alice", "type": "note", "content": "again"}))["actor"] == "alice"
        assert (await ok(client, "heartbeat", {}))["actor"] == "alice"
        assert await ok(client, "ack", {"interaction": 1}) == {"agent": "alice", "checkpoint": 1}
        # Reading is not speaking: any agent's inbox may be read.
        assert len((await ok(client, "next", {"agent": "bob"}))["events"]) == 2
        assert [e["actor"] for e in log_events()] == ["alice", "alice", "alice"]


async def paused() -> None:
    # The pause record `huddle run` leaves after a write error (backend/pause.rs).
    canonical = os.path.realpath(args.dir)
    spool = Path(os.environ["XDG_STATE_HOME"]) / "huddle" / hashlib.sha256(canonical.encode()).hexdigest()[:16]
    spool.mkdir(parents=True, exist_ok=True)
    (spool / "paused.json").write_text(json.dumps({"reason": "cannot write events.log: No space left on device", "since": "2026-01-01T00:00:00Z", "by": "test"}))
    async with connect() as client:
        message = await refused(client, "log", {"interaction": 1, "actor": "A", "type": "note", "content": "queued"})
        assert "huddle is paused (cannot write events.log: No space left on device)" in message, message
        assert "`huddle resume`" in message, message
        status = await ok(client, "status", {})
        assert status["paused"]["reason"].startswith("cannot write events.log"), status
        out = cli("resume")
        assert out.returncode == 0, out.stderr
        assert [e["content"] for e in log_events()] == ["queued"], log_events()
        assert (await ok(client, "log", {"interaction": 1, "actor": "A", "type": "note", "content": "live"}))["interaction"] == 1


async def concurrent(transport: str) -> None:
    per_client = 500

    async def agent(name: str, client: Client) -> list[int]:
        numbers = []
        for i in range(per_client):
            written = await ok(client, "log", {"interaction": "next", "actor": name, "type": "note", "content": f"{name} {i}"})
            numbers.append(written["interaction"])
        return numbers

    if transport == "stdio":
        async with connect() as a, connect() as b:
            results = await asyncio.gather(agent("A", a), agent("B", b))
    else:
        async with connect(url=args.url) as a, connect(url=args.url) as b:
            results = await asyncio.gather(agent("A", a), agent("B", b))
    written = results[0] + results[1]
    assert len(set(written)) == 2 * per_client, "interactions handed out twice"
    assert sorted(written) == list(range(1, 2 * per_client + 1)), "gaps in the interactions"
    contents = [e["content"] for e in log_events()]
    assert sorted(contents) == sorted(f"{n} {i}" for n in "AB" for i in range(per_client)), "an event lost or doubled"
    async with connect() as client:
        unread = await ok(client, "next", {"agent": "reader", "limit": 10000})
        numbers = [e["interaction"] for e in unread["events"]]
        assert len(numbers) == 2 * per_client and len(set(numbers)) == len(numbers), len(numbers)


async def concurrent_with_shell() -> None:
    """Two clients log with `next` while the test runs the brief's shell
    appender beside them (explicit interaction numbers)."""
    per_client = 200

    async def agent(name: str, client: Client) -> list[int]:
        numbers = []
        for i in range(per_client):
            written = await ok(client, "log", {"interaction": "next", "actor": name, "type": "note", "content": f"{name} {i}"})
            numbers.append(written["interaction"])
        return numbers

    async with connect() as a, connect() as b:
        results = await asyncio.gather(agent("A", a), agent("B", b))
    written = results[0] + results[1]
    assert len(set(written)) == len(written), "interactions handed out twice"
    events = log_events()
    highest = 0
    for event in events:
        if event["actor"] in ("A", "B"):
            assert event["interaction"] > highest, f"`next` gave {event['interaction']} after {highest}"
        highest = max(highest, event["interaction"])
    ours = [e["content"] for e in events if e["actor"] in ("A", "B")]
    assert sorted(ours) == sorted(f"{n} {i}" for n in "AB" for i in range(per_client)), "an event lost or doubled"


async def beside_daemon() -> None:
    """The tools with a daemon running in the directory (its heartbeats and
    claims in the log, its snapshots)."""
    async with connect() as client:
        first = await ok(client, "log", {"interaction": "next", "actor": "Agent A", "type": "question", "content": "with a daemon"})
        unread = await ok(client, "next", {"agent": "agent-a"})
        assert [e["id"] for e in unread["events"] if e["actor"] == "Agent A"] == [first["id"]], unread
        acked = await ok(client, "ack", {"agent": "agent-a", "interaction": first["interaction"]})
        assert acked["checkpoint"] == first["interaction"], acked
        cli("log", "next", "Agent B", "answer", "from the CLI")
        waited = await ok(client, "wait", {"agent": "agent-a", "timeout_ms": 10000})
        assert [e["content"] for e in waited["events"]] == ["from the CLI"], waited
        status = await ok(client, "status", {})
        assert status["leader"] == "d1", status
        found = await ok(client, "read", {"actor": "Agent A"})
        assert [e["id"] for e in found["events"]] == [first["id"]], found


async def wait_latency() -> None:
    async with connect() as client:
        # Nothing to read: an empty answer once the timeout has passed.
        started = time.monotonic()
        empty = await ok(client, "wait", {"agent": "waiter", "timeout_ms": 300})
        took = time.monotonic() - started
        assert empty["events"] == [] and empty["timed_out"] is True, empty
        assert 0.3 <= took < 2.0, took
        latencies = []
        for round_ in range(1, 6):
            async def timed_wait() -> tuple[dict, float]:
                answer = await ok(client, "wait", {"agent": "waiter", "timeout_ms": 20000})
                return answer, time.monotonic()

            waiting = asyncio.create_task(timed_wait())
            # Let the call reach the server; if it had not, the event would be read at once anyway.
            await asyncio.sleep(0.3)
            assert not waiting.done(), "wait returned with nothing new"
            out = await asyncio.to_thread(cli, "log", "next", "cli-writer", "question", f"round {round_}")
            appended = time.monotonic()
            assert out.returncode == 0, out.stderr
            answer, returned = await waiting
            # Negative when the answer came before the CLI process was seen to exit.
            latencies.append(returned - appended)
            assert [e["content"] for e in answer["events"]] == [f"round {round_}"], answer
            await ok(client, "ack", {"agent": "waiter", "interaction": answer["events"][0]["interaction"]})
        print("wait latencies (ms):", [round(l * 1000, 1) for l in latencies])
        assert max(latencies) < 0.1, latencies


async def resources() -> None:
    async with connect() as client:
        listed = {r.uri: r for r in (await client.list_resources()).resources}
        assert set(listed) == {COMMUNICATION, "huddle://archive.md", "huddle://status"}, listed
        text = (await client.read_resource(COMMUNICATION)).contents[0].text
        assert text == (Path(args.dir) / "communication.md").read_text()
        status = json.loads((await client.read_resource("huddle://status")).contents[0].text)
        assert status["events"] == 0, status
        await ok(client, "log", {"interaction": "next", "actor": "A", "type": "question", "content": "fresh news"})

        async with client.listen(resource_subscriptions=[COMMUNICATION]) as subscription:
            assert subscription.honored.resource_subscriptions == [COMMUNICATION], subscription.honored
            out = await asyncio.to_thread(cli, "snapshot")
            assert out.returncode == 0, out.stderr
            event = await asyncio.wait_for(anext(aiter(subscription)), 10)
            assert event.uri == COMMUNICATION, event
        text = (await client.read_resource(COMMUNICATION)).contents[0].text
        assert "fresh news" in text, text


async def resources_legacy() -> None:
    updated: asyncio.Queue[str] = asyncio.Queue()

    async def on_message(message) -> None:
        root = getattr(message, "root", message)
        uri = getattr(getattr(root, "params", None), "uri", None)
        if getattr(root, "method", None) == "notifications/resources/updated" and uri:
            await updated.put(str(uri))

    params = stdio()
    async with Client(params, mode="legacy", cache=None, message_handler=on_message) as client:
        await client.session.subscribe_resource(COMMUNICATION)
        await ok(client, "log", {"interaction": "next", "actor": "A", "type": "question", "content": "legacy news"})
        out = await asyncio.to_thread(cli, "snapshot")
        assert out.returncode == 0, out.stderr
        uri = await asyncio.wait_for(updated.get(), 10)
        assert uri == COMMUNICATION, uri
        assert "legacy news" in (await client.read_resource(COMMUNICATION)).contents[0].text


async def http_token() -> None:
    # Without the token: refused before any MCP is spoken.
    response = httpx2.post(args.url, json={"jsonrpc": "2.0", "id": 1, "method": "ping"}, headers={"Accept": "application/json, text/event-stream"})
    assert response.status_code == 401, response
    wrong = httpx2.post(args.url, json={}, headers={"Authorization": "Bearer wrong"})
    assert wrong.status_code == 401, wrong
    async with connect(url=args.url, token=args.token) as client:
        assert {t.name for t in (await client.list_tools()).tools} == TOOLS
        written = await ok(client, "log", {"interaction": "next", "actor": "A", "type": "note", "content": "over http"})
        assert [e["id"] for e in log_events()] == [written["id"]]


async def http_tools() -> None:
    async with connect(url=args.url) as client:
        assert {t.name for t in (await client.list_tools()).tools} == TOOLS
        written = await ok(client, "log", {"interaction": "next", "actor": "A", "type": "note", "content": "over http"})
        assert (await ok(client, "next", {"agent": "h"}))["events"][0]["id"] == written["id"]
        assert "invalid type" in await refused(client, "log", {"interaction": 1, "actor": "A", "type": "X", "content": "x"})
        waiting = asyncio.create_task(ok(client, "wait", {"agent": "h2", "timeout_ms": 100}))
        assert (await waiting)["events"][0]["id"] == written["id"]


SCENARIOS = {
    "schemas": schemas,
    "tools": tools_happy,
    "bad_input": bad_input,
    "pinned": pinned,
    "paused": paused,
    "concurrent_stdio": lambda: concurrent("stdio"),
    "concurrent_http": lambda: concurrent("http"),
    "concurrent_with_shell": concurrent_with_shell,
    "beside_daemon": beside_daemon,
    "wait": wait_latency,
    "resources": resources,
    "resources_legacy": resources_legacy,
    "http_token": http_token,
    "http_tools": http_tools,
}


def main() -> None:
    global args
    parser = argparse.ArgumentParser()
    parser.add_argument("scenario", choices=sorted(SCENARIOS))
    parser.add_argument("--huddle", required=True)
    parser.add_argument("--dir", required=True)
    parser.add_argument("--url")
    parser.add_argument("--token")
    args = parser.parse_args()
    asyncio.run(SCENARIOS[args.scenario]())
    print(f"PASS {args.scenario}")
    sys.stdout.flush()


if __name__ == "__main__":
    main()

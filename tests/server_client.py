"""Talk to a running ComfyUI server as its frontend does: queue a prompt over HTTP, follow it on the websocket.

``run(server, prompt)`` queues an API prompt and waits for its end; with
``cancel_at=(node_id, value)`` it posts /interrupt as soon as that node reports
that much progress, and measures how long the server then takes to say the
prompt was interrupted.
"""
from __future__ import annotations

import asyncio
import json
import time
import uuid
from dataclasses import dataclass

ENDS = ("execution_success", "execution_error", "execution_interrupted")


@dataclass
class Run:
    prompt_id: str
    end: str  # one of ENDS
    cancel_latency_s: float | None  # from /interrupt to "execution_interrupted"
    executed: list[str]  # node ids in the order the server started them
    progress_times: dict[str, list[float]]  # node id -> monotonic time of each of its progress messages


async def _run(url: str, prompt: dict, cancel_at: tuple[str, int] | None, timeout: float) -> Run:
    import aiohttp

    client_id = uuid.uuid4().hex
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(f"{url.replace('http', 'ws', 1)}/ws?clientId={client_id}") as ws:
            async with session.post(f"{url}/prompt", json={"prompt": prompt, "client_id": client_id}) as answer:
                body = await answer.json()
            if answer.status != 200:
                raise AssertionError(f"the server refused the prompt: {body}")
            prompt_id, executed, interrupted_at, progress_times = body["prompt_id"], [], None, {}
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                message = await ws.receive(timeout=deadline - time.monotonic())
                if message.type != aiohttp.WSMsgType.TEXT:
                    continue
                event = json.loads(message.data)
                kind, data = event.get("type"), event.get("data") or {}
                if data.get("prompt_id", prompt_id) != prompt_id:
                    continue
                if kind == "executing" and data.get("node") is not None:
                    executed.append(str(data["node"]))
                if kind == "progress":
                    progress_times.setdefault(str(data.get("node")), []).append(time.monotonic())
                if (cancel_at and interrupted_at is None and kind == "progress"
                        and str(data.get("node")) == cancel_at[0] and data.get("value", 0) >= cancel_at[1]):
                    async with session.post(f"{url}/interrupt"):
                        interrupted_at = time.monotonic()
                if kind in ENDS:
                    latency = time.monotonic() - interrupted_at if interrupted_at and kind == ENDS[2] else None
                    return Run(prompt_id, kind, latency, executed, progress_times)
    raise TimeoutError(f"prompt {prompt_id} did not end within {timeout:.0f} s")


def run(server, prompt: dict, cancel_at: tuple[str, int] | None = None, timeout: float = 600.0) -> Run:
    return asyncio.run(_run(server.url, prompt, cancel_at, timeout))


def history(server, prompt_id: str, timeout: float = 60.0) -> dict:
    """The prompt's /history entry; the server writes it just after it reports the prompt's end."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        entry = server.get(f"/history/{prompt_id}").get(prompt_id)
        if entry is not None:
            return entry
        time.sleep(0.1)
    raise TimeoutError(f"no history entry for prompt {prompt_id} within {timeout:.0f} s")


def reset_peak_rss(pid: int) -> None:
    """Start a new peak-RSS window for process ``pid`` (Linux: writing 5 to clear_refs resets VmHWM)."""
    with open(f"/proc/{pid}/clear_refs", "w") as refs:
        refs.write("5")


def peak_rss_mib(pid: int) -> float:
    """The highest RSS of process ``pid`` since ``reset_peak_rss`` (VmHWM)."""
    with open(f"/proc/{pid}/status") as status:
        line = next(line for line in status if line.startswith("VmHWM:"))
    return int(line.split()[1]) / 1024

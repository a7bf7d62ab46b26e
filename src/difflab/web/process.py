"""``difflab serve`` as a child process, for the browser tests and the serve benchmarks: start it
on a free loopback port, wait until the page answers, stop it."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until_up(url: str, process: subprocess.Popen, timeout: float = 90.0) -> None:
    """Poll ``url`` until it answers 200; a ``RuntimeError`` with the server's output if it
    exits first or does not answer within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            out = process.stdout.read() if process.stdout else ""
            raise RuntimeError(f"difflab serve exited with code {process.returncode}:\n{out}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.25)
    raise RuntimeError(f"difflab serve did not answer {url} within {timeout:g} s")


@contextlib.contextmanager
def running_server(
    checkpoint: str | os.PathLike[str],
    *flags: str,
    cwd: str | os.PathLike[str] | None = None,
    port: int | None = None,
    timeout: float = 90.0,
    log: str | os.PathLike[str] | None = None,
) -> Iterator[tuple[str, subprocess.Popen]]:
    """``difflab serve --checkpoint CHECKPOINT --port PORT FLAGS...`` in a child process; yields
    (its URL, the process) once the page answers, and stops it (SIGTERM) afterwards. Its output
    goes to ``log`` (a file) or is discarded."""
    port = port or free_port()
    argv: Sequence[str] = [
        sys.executable, "-m", "difflab", "serve", "--checkpoint", str(checkpoint),
        "--port", str(port), *flags,
    ]  # fmt: skip
    sink = open(log, "w") if log else subprocess.DEVNULL  # noqa: SIM115 (closed below)
    process = subprocess.Popen(argv, cwd=cwd, stdout=sink, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}/"
    try:
        try:
            wait_until_up(url, process, timeout)
        except RuntimeError as err:
            if log:
                sink.flush()
                raise RuntimeError(f"{err}\n{Path(log).read_text()}") from None
            raise
        yield url, process
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if log:
            sink.close()


def call_event(
    url: str,
    fn_index: int,
    data: Any,
    *,
    session: str | None = None,
    body: bytes | None = None,
    timeout: float = 60.0,
) -> tuple[int, dict[str, Any]]:
    """One event through the queue, as the page sends it (raw HTTP, no client library): POST
    ``queue/join``, then read the session's event stream until the event completes.

    Returns (the join's HTTP status, what the server said): the refusal's JSON when the join was
    refused, else the ``process_completed`` message (``success``, ``output`` with ``error`` or
    ``data``). ``body`` replaces the JSON body (for malformed requests).
    """
    session = session or uuid.uuid4().hex[:12]
    payload = body if body is not None else json.dumps({
        "data": data, "fn_index": fn_index, "session_hash": session, "event_data": None,
        "trigger_id": None,
    }).encode()  # fmt: skip
    request = urllib.request.Request(
        f"{url}gradio_api/queue/join", data=payload, method="POST",
        headers={"Content-Type": "application/json"},
    )  # fmt: skip
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            event_id = json.loads(response.read())["event_id"]
    except urllib.error.HTTPError as err:
        text = err.read().decode("utf-8", "replace")
        try:
            return err.code, json.loads(text)
        except ValueError:
            return err.code, {"detail": text}
    stream = f"{url}gradio_api/queue/data?session_hash={session}"
    with urllib.request.urlopen(stream, timeout=timeout) as response:
        for raw in response:
            line = raw.decode("utf-8", "replace").strip()
            if not line.startswith("data:"):
                continue
            message = json.loads(line[5:])
            if message.get("event_id") == event_id and message.get("msg") == "process_completed":
                return 200, message
    raise RuntimeError(f"the event stream of {event_id} ended before the event completed")


def upload(url: str, name: str, data: bytes, timeout: float = 60.0) -> tuple[int, Any]:
    """POST one file to the page's upload route, as the upload box does: (HTTP status, the
    server's answer: the stored files' paths, or the refusal)."""
    import httpx  # a dependency of Gradio: the demo extra

    response = httpx.post(f"{url}gradio_api/upload", files={"files": (name, data)}, timeout=timeout)
    try:
        return response.status_code, response.json()
    except ValueError:
        return response.status_code, {"detail": response.text}

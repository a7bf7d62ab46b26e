"""A gate in front of the web demo's server: every request is bounded and every file it names is
one that was uploaded to this page, before Gradio reads it.

Gradio stores each value a queue request carries in the session's state, and moves each file
a request names into its cache (downloading a URL when a client names one). So the gate, an
ASGI middleware with no Gradio import, refuses with one line (HTTP 413 or 400, ``{"detail":
"..."}``):

- a body larger than ``max_body`` (an upload: larger than ``max_upload`` plus its form fields),
  by its Content-Length before reading it and by counting when there is none;
- a queue request (``/queue/join``) that is not a JSON object, names an event the page does not
  have, or carries another number of values than that event takes;
- a file reference (a JSON object with a ``path``, or Gradio's ``gradio.FileData`` marker) whose
  path is not inside the upload folder: another file of the server, or a URL (nothing is fetched).

And no server path reaches the page: the upload folder is named ``upload`` in what the upload
route answers, and the guard turns that name back into the folder in the requests that carry it
(a queue request's files, the file route). What passes reaches Gradio otherwise unchanged; the
values themselves are checked by ``difflab.web.core``.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from difflab.web.core import shown

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

MAX_BODY = 64 * 1024  # a queue request of the page is under 2 kB; 64 kB leaves room, no more
FORM_OVERHEAD = 64 * 1024  # an upload's multipart headers and boundaries beyond the file itself
SIZE_UNITS = {"b": 1, "kb": 1024, "mb": 1024**2, "gb": 1024**3}  # as Gradio reads them
FILE_FIELDS: dict[str, tuple[type, ...]] = {  # Gradio's FileData, and the JSON types it takes
    "path": (str,), "url": (str, type(None)), "size": (int, type(None)),
    "orig_name": (str, type(None)), "mime_type": (str, type(None)), "is_stream": (bool,),
    "meta": (dict,),
}  # fmt: skip
JOIN_FIELDS: dict[str, tuple[type, ...]] = {  # the typed fields of a queue request's body
    "event_id": (str, type(None)), "oauth_token": (str, type(None)),
    "trigger_id": (int, type(None)), "simple_format": (bool,), "batched": (bool, type(None)),
}  # fmt: skip
JOIN_TYPES = {"event_id": "text or null", "oauth_token": "text or null",
              "trigger_id": "an integer or null", "simple_format": "true or false",
              "batched": "true, false or null"}  # fmt: skip
UPLOAD_ALIAS = "upload"  # how the page is told where its uploads are: never the server's path
FILE_ROUTE = "/file="  # Gradio's route that serves a file by its path
MAX_SESSION = 64  # characters of a session id (the page's are 11)
MAX_SESSIONS = 4096  # sessions remembered as having joined the queue
MAX_DEPTH = 8  # JSON nesting a request may have (the page's deepest is 3: data -> file -> meta)


class Refused(Exception):
    """A request the gate answers itself: ``status`` and the one line it says why."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class RequestGuard:
    """ASGI middleware: ``RequestGuard(app, inputs=..., upload_dir=..., max_upload=...)``.

    ``inputs`` maps each event's index (Gradio's ``fn_index``) to the kind of each value it takes:
    ``"file"`` (an upload box: null or a file) or ``"value"`` (anything JSON; difflab checks it);
    ``upload_dir`` is the only folder a request may name files in.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        inputs: dict[int, tuple[str, ...]],
        upload_dir: str | os.PathLike[str],
        max_upload: int,
        max_body: int = MAX_BODY,
    ) -> None:
        self.app = app
        self.inputs = inputs
        self.upload_dir = Path(upload_dir).resolve()
        self.max_upload = max_upload
        self.max_body = max_body
        self.sessions: dict[str, None] = {}  # sessions that joined the queue, oldest first

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        if scope["method"] in ("GET", "HEAD", "OPTIONS"):
            if path.endswith("/queue/data") and _query(scope, "session_hash") not in self.sessions:
                # Gradio would wait for the unknown session, then fail inside its open stream
                await _refuse(send, Refused(404, "no queued event for this session"))
                return
            if FILE_ROUTE in path:  # the page names its upload by the alias: Gradio by the path
                route, _, file = path.partition(FILE_ROUTE)
                path = f"{route}{FILE_ROUTE}{self.to_server(file)}"
                scope = {**scope, "path": path, "raw_path": path.encode()}
            await self.app(scope, receive, send)
            return
        upload = path.endswith("/upload")
        limit = self.max_upload + FORM_OVERHEAD if upload else self.max_body
        try:
            length = _content_length(scope)
            if length is not None and length > limit:
                raise Refused(
                    413, f"request of {length:,} bytes; this server takes {limit:,} at most"
                )
            if upload:  # streamed to Gradio's own upload handler, counted as it goes; the paths
                # it answers name the upload folder by its alias
                await self.app(scope, _counting(receive, limit), _rewriting(send, self.to_client))
                return
            body = await _read_body(receive, limit)
            if path.endswith("/queue/join"):
                body = self.check_join(body)
                headers = [(k, v) for k, v in scope["headers"] if k != b"content-length"]
                scope = {**scope, "headers": [*headers, (b"content-length", b"%d" % len(body))]}
        except Refused as refusal:
            await _refuse(send, refusal)
            return
        await self.app(scope, _replay(body, receive), send)

    def check_join(self, body: bytes) -> bytes:
        """A queue request: a JSON object naming one of the page's events, with as many values
        as that event takes, and no file outside the upload folder. Returns the body Gradio
        gets: the same request, its files named by their paths on the server."""
        try:
            request = json.loads(body)
        except (UnicodeDecodeError, ValueError):
            raise Refused(400, "a queue request must be a JSON object") from None
        if not isinstance(request, dict):
            raise Refused(400, "a queue request must be a JSON object")
        fn_index, data = request.get("fn_index"), request.get("data")
        if type(fn_index) is not int or fn_index not in self.inputs:
            raise Refused(400, f"no event {shown(fn_index)} on this page")
        kinds = self.inputs[fn_index]
        if not isinstance(data, list) or len(data) != len(kinds):
            count = len(data) if isinstance(data, list) else shown(data)
            raise Refused(400, f"event {fn_index} takes {len(kinds)} values, got {count}")
        for i, (kind, value) in enumerate(zip(kinds, data, strict=True)):
            if kind == "file" and value is not None and not _looks_like_file(value):
                raise Refused(
                    400, f"value {i} of event {fn_index} must be an uploaded file or null"
                )
        for name, types in JOIN_FIELDS.items():  # as Gradio's model of the body wants them
            if name in request and not _is_a(request[name], types):
                raise Refused(400, f"{name} must be {JOIN_TYPES[name]}, got {shown(request[name])}")
        session = request.get("session_hash")
        if not isinstance(session, str) or not 0 < len(session) <= MAX_SESSION:
            raise Refused(400, f"session_hash must be text of 1..{MAX_SESSION} characters")
        for value in (data, request.get("event_data")):
            self.check_files(value)
        self.sessions[session] = None  # its event stream may now be read
        while len(self.sessions) > MAX_SESSIONS:
            del self.sessions[next(iter(self.sessions))]  # the oldest
        return json.dumps(request).encode()

    def check_files(self, value: Any, depth: int = 0) -> None:
        """Every file reference in ``value`` names a file inside the upload folder."""
        if depth > MAX_DEPTH:
            raise Refused(400, f"a queue request may nest values {MAX_DEPTH} deep at most")
        if isinstance(value, list):
            for item in value:
                self.check_files(item, depth + 1)
        elif isinstance(value, dict):
            if _looks_like_file(value):
                self.check_file(value)
            for item in value.values():
                self.check_files(item, depth + 1)

    def check_file(self, file: dict[str, Any]) -> None:
        """A file reference as the upload box sends it: Gradio's file fields of their types
        (anything else fails inside Gradio), and a path inside the upload folder."""
        file["path"] = self.check_path(file.get("path"))  # Gradio gets the path on the server
        for name, value in file.items():
            if name not in FILE_FIELDS or not _is_a(value, FILE_FIELDS[name]):
                raise Refused(400, f"a file's {shown(name)} must be one of Gradio's file fields")

    def check_path(self, path: Any) -> str:
        """The server path of a file the page uploaded (named by the alias, or by its path)."""
        refusal = Refused(400, "a file must be one uploaded to this page")
        if not isinstance(path, str) or "://" in path or "\x00" in path:
            raise refusal
        path = self.to_server(path)
        try:
            inside = Path(path).resolve().is_relative_to(self.upload_dir)
        except (OSError, ValueError):
            raise refusal from None
        if not inside:
            raise refusal
        return path

    def to_server(self, path: str) -> str:
        """``upload/<hash>/name.png`` (what the page is told) as the file's path on the server."""
        if path == UPLOAD_ALIAS or path.startswith(f"{UPLOAD_ALIAS}/"):
            return f"{self.upload_dir}{path[len(UPLOAD_ALIAS) :]}"
        return path

    def to_client(self, text: str) -> str:
        """``text`` with the upload folder's path replaced by its alias."""
        return text.replace(str(self.upload_dir), UPLOAD_ALIAS)


def _is_a(value: Any, types: tuple[type, ...]) -> bool:
    """``isinstance`` where a bool is not a number (JSON keeps them apart)."""
    return isinstance(value, types) and not (isinstance(value, bool) and bool not in types)


def _looks_like_file(value: Any) -> bool:
    """A JSON object that Gradio (or this guard) takes for a file: a ``path``, or the marker."""
    if not isinstance(value, dict):
        return False
    meta = value.get("meta")
    return "path" in value or (isinstance(meta, dict) and meta.get("_type") == "gradio.FileData")


def _query(scope: Scope, name: str) -> str | None:
    values = parse_qs(scope.get("query_string", b"").decode("latin-1")).get(name)
    return values[0] if values else None


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                raise Refused(400, "Content-Length must be a number of bytes") from None
    return None


async def _read_body(receive: Receive, limit: int) -> bytes:
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise Refused(400, "the client went away")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise Refused(
                413, f"request of over {limit:,} bytes; this server takes {limit:,} at most"
            )
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def _replay(body: bytes, receive: Receive) -> Receive:
    """A ``receive`` that hands the app the body already read, then waits for the client."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


def _rewriting(send: Send, rewrite: Callable[[str], str]) -> Send:
    """A ``send`` that holds back a (small, JSON) response to pass its text through ``rewrite``."""
    start: Message | None = None
    chunks: list[bytes] = []

    async def rewriting(message: Message) -> None:
        nonlocal start
        if message["type"] == "http.response.start":
            start = message
            return
        if message["type"] != "http.response.body" or start is None:
            await send(message)
            return
        chunks.append(message.get("body", b""))
        if message.get("more_body", False):
            return
        body = rewrite(b"".join(chunks).decode("utf-8", "replace")).encode()
        headers = [(k, v) for k, v in start.get("headers", []) if k != b"content-length"]
        await send({**start, "headers": [*headers, (b"content-length", b"%d" % len(body))]})
        await send({"type": "http.response.body", "body": body})

    return rewriting


def _counting(receive: Receive, limit: int) -> Receive:
    """A ``receive`` that ends the request (as a disconnect) once more than ``limit`` bytes came."""
    size = 0

    async def counting() -> Message:
        nonlocal size
        message = await receive()
        size += len(message.get("body", b""))
        if size > limit:
            return {"type": "http.disconnect"}
        return message

    return counting


async def _refuse(send: Send, refusal: Refused) -> None:
    body = json.dumps({"detail": str(refusal)}).encode()
    await send({
        "type": "http.response.start", "status": refusal.status,
        "headers": [(b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode())],
    })  # fmt: skip
    await send({"type": "http.response.body", "body": body})


def parse_size(text: str | int, name: str = "size") -> int:
    """A size such as ``500kb``, ``1mb`` or ``1048576`` (bytes) as bytes; a one-line error else."""
    if isinstance(text, int):
        return text
    match = re.fullmatch(r"\s*(\d+)\s*(b|kb|mb|gb)?\s*", str(text).lower())
    if match is None or int(match.group(1)) < 1:
        raise ValueError(
            f"{name} must be a positive number of b, kb, mb or gb (e.g. 500kb), got {text!r}"
        )
    return int(match.group(1)) * SIZE_UNITS[match.group(2) or "b"]

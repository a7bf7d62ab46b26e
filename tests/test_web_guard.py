"""The request guard in front of the web demo (no Gradio, no server): an ASGI app under test gets
exactly the requests the guard lets through, byte for byte, and every other request is answered
by the guard with its status and one line."""

import asyncio
import json

import pytest

from difflab.web.guard import MAX_BODY, RequestGuard, parse_size

V, F = "value", "file"
INPUTS = {0: (V,) * 8, 1: (), 3: (V, V, F, V, V)}  # generate, stop, forward
GENERATE = ["ddim", 5, "0", 2, None, 1.0, 0.0, 0]


class Recorder:
    """The app behind the guard: records each request's path and body, answers 200."""

    def __init__(self):
        self.seen = []
        self.answer = b"ok"
        self.headers = []

    async def __call__(self, scope, receive, send):
        body = b""
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                self.seen.append((scope["path"], None))  # the request was cut off
                return
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        self.seen.append((scope["path"], body))
        self.headers = dict(scope["headers"])
        length = str(len(self.answer)).encode()
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-length", length)]})  # fmt: skip
        await send({"type": "http.response.body", "body": self.answer})


def call(guard, path, body=b"", method="POST", chunks=None, length=True, query=b""):
    """One request through ``guard``: (status, the JSON or text it answered)."""
    parts = chunks if chunks is not None else [body]
    headers = [(b"content-length", str(sum(map(len, parts))).encode())] if length else []
    scope = {"type": "http", "method": method, "path": path, "headers": headers,
             "query_string": query}  # fmt: skip
    incoming = [
        {"type": "http.request", "body": part, "more_body": i < len(parts) - 1}
        for i, part in enumerate(parts)
    ]
    sent = []

    async def receive():
        return incoming.pop(0) if incoming else {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)

    asyncio.run(guard(scope, receive, send))
    status = next(m["status"] for m in sent if m["type"] == "http.response.start")
    text = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return status, (json.loads(text)["detail"] if status != 200 else text.decode())


@pytest.fixture
def guarded(tmp_path):
    uploads = tmp_path / "uploads"
    (uploads / "abc").mkdir(parents=True)
    (uploads / "abc" / "x.png").write_bytes(b"png")
    (tmp_path / "secret.txt").write_text("secret")
    app = Recorder()
    guard = RequestGuard(app, inputs=INPUTS, upload_dir=uploads, max_upload=1000)
    return guard, app, uploads


def join(fn_index=0, data=None, session="s1", **extra):
    body = {"data": GENERATE if data is None else data, "fn_index": fn_index,
            "session_hash": session, "event_data": None, **extra}  # fmt: skip
    return json.dumps(body).encode()


def test_a_good_queue_request_reaches_the_app_unchanged(guarded):
    guard, app, uploads = guarded
    body = join(3, ["upload", 0, {"path": str(uploads / "abc" / "x.png"), "url": None,
                                  "meta": {"_type": "gradio.FileData"}}, 5, "0"])  # fmt: skip
    assert call(guard, "/gradio_api/queue/join", body) == (200, "ok")
    assert app.seen == [("/gradio_api/queue/join", body)]
    # in pieces, too
    assert call(guard, "/gradio_api/queue/join", chunks=[body[:10], body[10:]])[0] == 200
    assert app.seen[-1] == ("/gradio_api/queue/join", body)


@pytest.mark.parametrize(
    "body, status, message",
    [
        (b"x" * (MAX_BODY + 1), 413, "request of 65,537 bytes; this server takes 65,536 at most"),
        (b"\xff\xfe not json", 400, "a queue request must be a JSON object"),
        (b"[1, 2]", 400, "a queue request must be a JSON object"),
        (join(fn_index=99), 400, "no event 99 on this page"),
        (join(fn_index="0"), 400, "no event '0' on this page"),
        (join(fn_index=True), 400, "no event True on this page"),
        (join(data=["ddim"]), 400, "event 0 takes 8 values, got 1"),
        (join(data=[*GENERATE, 1]), 400, "event 0 takes 8 values, got 9"),
        (join(data="x" * 100), 400, "event 0 takes 8 values, got 'xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx... (102 characters)"),
        (join(trigger_id=float("nan")), 400, "trigger_id must be an integer or null, got nan"),
        (join(trigger_id=True), 400, "trigger_id must be an integer or null, got True"),
        (join(oauth_token=0.5), 400, "oauth_token must be text or null, got 0.5"),
        (join(batched="yes"), 400, "batched must be true, false or null, got 'yes'"),
        (join(session=None), 400, "session_hash must be text of 1..64 characters"),
        (join(session="s" * 65), 400, "session_hash must be text of 1..64 characters"),
    ],
)  # fmt: skip
def test_malformed_queue_requests_are_refused_in_one_line(guarded, body, status, message):
    guard, app, _ = guarded
    assert call(guard, "/gradio_api/queue/join", body) == (status, message)
    assert app.seen == []  # Gradio never saw it


@pytest.mark.parametrize(
    "path",
    [
        "https://example.com/cat.png",  # a URL: Gradio would download it
        "http://127.0.0.1:9/x.png",
        "/etc/passwd",  # another file of the server
        "SECRET",  # beside the upload folder (filled in below)
        "UPLOADS/../secret.txt",  # out of it by ..
        "x.png",  # relative: the server's working directory
        "UPLOADS/abc/x.png\x00.txt",
        None,
        17,
    ],
)
def test_a_file_not_uploaded_to_the_page_is_refused_wherever_it_sits(guarded, path):
    guard, app, uploads = guarded
    if isinstance(path, str):
        path = path.replace("UPLOADS", str(uploads)).replace(
            "SECRET", str(uploads.parent / "secret.txt")
        )
    file = {"path": path, "meta": {"_type": "gradio.FileData"}}
    for data in (["upload", 0, file, 5, "0"], ["upload", 0, None, 5, [[{"x": file}]]]):
        status, message = call(guard, "/gradio_api/queue/join", join(3, data))
        assert (status, message) == (400, "a file must be one uploaded to this page")
    # a bare {"path": ...} counts as a file too, and event_data is checked like data
    bare = join(3, ["upload", 0, {"path": path}, 5, "0"])
    assert call(guard, "/gradio_api/queue/join", bare)[0] == 400
    in_event = join(3, ["dataset", 0, None, 5, "0"], event_data={"value": file})
    assert call(guard, "/gradio_api/queue/join", in_event)[0] == 400
    assert app.seen == []


@pytest.mark.parametrize(
    "upload, message",
    [
        ("a string", "value 2 of event 3 must be an uploaded file or null"),
        (7, "value 2 of event 3 must be an uploaded file or null"),
        ({"x": 1}, "value 2 of event 3 must be an uploaded file or null"),
        ({"path": "OK", "size": "big"}, "a file's 'size' must be one of Gradio's file fields"),
        ({"path": "OK", "size": True}, "a file's 'size' must be one of Gradio's file fields"),
        ({"path": "OK", "is_stream": "no"}, "a file's 'is_stream' must be one of Gradio's file fields"),
        ({"path": "OK", "extra": 1}, "a file's 'extra' must be one of Gradio's file fields"),
    ],
)  # fmt: skip
def test_the_upload_box_takes_null_or_a_well_formed_file(guarded, upload, message):
    guard, _, uploads = guarded
    if isinstance(upload, dict) and upload.get("path") == "OK":
        upload = {**upload, "path": str(uploads / "abc" / "x.png")}
    body = join(3, ["upload", 0, upload, 5, "0"])
    assert call(guard, "/gradio_api/queue/join", body) == (400, message)
    assert call(guard, "/gradio_api/queue/join", join(3, ["dataset", 0, None, 5, "0"]))[0] == 200


def test_deep_nesting_is_refused(guarded):
    guard, _, _ = guarded
    deep = []
    for _ in range(50):
        deep = [deep]
    status, message = call(guard, "/gradio_api/queue/join", join(3, ["dataset", 0, None, 5, deep]))
    assert (status, message) == (400, "a queue request may nest values 8 deep at most")


def test_every_body_is_bounded_with_or_without_a_length(guarded):
    guard, app, _ = guarded
    big = [b"x" * 40_000, b"x" * 40_000]  # 80 kB in two pieces, no Content-Length
    status, message = call(guard, "/gradio_api/queue/join", chunks=big, length=False)
    assert (status, message) == (
        413,
        "request of over 65,536 bytes; this server takes 65,536 at most",
    )
    assert call(guard, "/gradio_api/cancel", chunks=big, length=False)[0] == 413
    assert app.seen == []
    assert call(guard, "/gradio_api/reset", b'{"event_id": "x"}') == (200, "ok")  # small: passes
    assert app.seen == [("/gradio_api/reset", b'{"event_id": "x"}')]


def test_uploads_get_their_own_limit_and_are_cut_off_past_it(guarded):
    guard, app, _ = guarded
    limit = 1000 + 64 * 1024  # --max-upload plus the form's own fields
    assert call(guard, "/gradio_api/upload", b"x" * limit)[0] == 200
    status, message = call(guard, "/gradio_api/upload", b"x" * (limit + 1))
    assert (status, message) == (
        413,
        f"request of {limit + 1:,} bytes; this server takes {limit:,} at most",
    )
    # without a Content-Length the upload handler reads a disconnect once the limit is passed
    app.seen.clear()
    with pytest.raises(StopIteration):  # the app answered nothing: the client "went away"
        call(guard, "/gradio_api/upload", chunks=[b"x" * limit, b"x"], length=False)
    assert app.seen == [("/gradio_api/upload", None)]


def test_the_event_stream_of_a_session_that_never_joined_is_refused(guarded):
    guard, _, _ = guarded
    stream = "/gradio_api/queue/data"
    assert call(guard, stream, method="GET", query=b"session_hash=nobody") == (
        404, "no queued event for this session",
    )  # fmt: skip
    assert call(guard, "/gradio_api/queue/join", join(session="s1"))[0] == 200
    assert call(guard, stream, method="GET", query=b"session_hash=s1") == (200, "ok")
    assert call(guard, "/", method="GET") == (200, "ok")  # the page itself is not guarded


@pytest.mark.parametrize(
    "text, expected",
    [("1mb", 1024**2), ("500kb", 500 * 1024), ("2048", 2048), (" 2 GB ", 2 * 1024**3), (7, 7)],
)
def test_sizes_read_as_gradio_reads_them(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["1zb", "-1", "", "0mb", "abc", "1.5mb"])
def test_bad_sizes_are_one_line(text):
    with pytest.raises(ValueError) as err:
        parse_size(text, "--max-upload")
    assert str(err.value) == (
        f"--max-upload must be a positive number of b, kb, mb or gb (e.g. 500kb), got {text!r}"
    )


def test_the_page_never_sees_the_upload_folders_path(guarded):
    """The upload route's answer names the folder ``upload``; the requests that carry that name
    (a queue request's file, the file route) reach Gradio with the server's path."""
    guard, app, uploads = guarded
    app.answer = json.dumps([str(uploads / "abc" / "x.png")]).encode()
    status, text = call(guard, "/gradio_api/upload", b"form")
    assert (status, json.loads(text)) == (200, ["upload/abc/x.png"])
    app.answer = b"ok"
    body = join(3, ["upload", 0, {"path": "upload/abc/x.png", "meta": {"_type": "gradio.FileData"}},
                    5, "0"])  # fmt: skip
    assert call(guard, "/gradio_api/queue/join", body)[0] == 200
    sent = json.loads(app.seen[-1][1])
    assert sent["data"][2]["path"] == str(uploads / "abc" / "x.png")
    assert app.headers[b"content-length"] == str(len(app.seen[-1][1])).encode()
    assert call(guard, "/gradio_api/file=upload/abc/x.png", method="GET")[0] == 200
    assert app.seen[-1][0] == f"/gradio_api/file={uploads}/abc/x.png"
    # the alias leads nowhere else
    for path in ("upload/../secret.txt", "upload/../../etc/passwd", "uploads/abc/x.png"):
        body = join(3, ["upload", 0, {"path": path}, 5, "0"])
        assert call(guard, "/gradio_api/queue/join", body) == (
            400, "a file must be one uploaded to this page",
        )  # fmt: skip

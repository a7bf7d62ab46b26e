"""The web demo under attack (slow): `difflab serve` in a child process, attacked over raw HTTP
as a hostile client would (docs/web_demo.md, "Protections"). Each attack gets its one-line
message or refusal, the server stays up, its resident memory (read from /proc) stays within a
stated bound, and its log holds no traceback. Needs the demo extra: pip install -e ".[demo]"."""

import concurrent.futures
import http.client
import http.server
import json
import math
import random
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import torch

from attacks import png_bomb, reset_peak_rss, rss_kb
from difflab.checkpoint import save_checkpoint
from difflab.config import DiffusionConfig, ModelConfig, RunConfig, TrainConfig
from difflab.models.unet import UNet
from difflab.web.process import call_event, running_server, upload

pytestmark = pytest.mark.slow

GENERATE, STOP, FORWARD, FORWARD_SLIDER = 0, 1, 3, 4  # the page's events (checked below)
GOOD = ["ddim", 4, "0", 2, None, 1.0, 0.0, 0]  # a generate request the page would send
PEAK_MB = 150  # the most an attack may raise the server's peak resident memory
GROWTH_MB = 50  # the most the server's resident memory may grow over a whole test
FUZZ_REQUESTS, FUZZ_SECONDS = 500, 120


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    pytest.importorskip("gradio")
    root = tmp_path_factory.mktemp("attack")
    mc = ModelConfig(image_size=8, in_channels=3, base_channels=8, channel_mults=(1, 2),
                     num_res_blocks=1)  # fmt: skip
    config = RunConfig(model=mc, diffusion=DiffusionConfig(timesteps=50), train=TrainConfig())
    torch.manual_seed(0)
    checkpoint = save_checkpoint(root / "ckpt" / "model.safetensors", config, UNet(mc).state_dict())
    log = root / "serve.log"
    with running_server(
        checkpoint, "--device", "cpu", "--queue-size", "8", cwd=root, log=log
    ) as (url, process):  # fmt: skip
        assert call_event(url, GENERATE, GOOD)[1]["success"]  # warmed up: later growth is real
        yield url, process, log, checkpoint


def memory_mb(process):
    now, peak = rss_kb(process.pid)
    return now / 1024, peak / 1024


def error_of(answer):
    """The one line the server answered: a refusal's detail, or the event's error message."""
    status, message = answer
    if status != 200:
        return message["detail"]
    assert not message["success"], message
    return message["output"]["error"]


def no_traceback(log):
    text = Path(log).read_text()
    assert "Traceback" not in text, text[-3000:]


def file_value(path):
    return {"path": path, "meta": {"_type": "gradio.FileData"}}


def test_the_page_has_the_events_these_tests_attack(server, tmp_path):
    url = server[0]
    with urllib.request.urlopen(f"{url}config", timeout=10) as response:
        deps = json.loads(response.read())["dependencies"]
    names = [(d["api_name"], len(d["inputs"])) for d in deps]
    assert names[:5] == [("generate", 8), ("stop", 0), ("sampler_changed", 1), ("forward", 5),
                         ("forward_1", 5)]  # fmt: skip
    # both forward events decode an upload: they share one slot (the page's own build)
    from difflab.web.app import build_app
    from difflab.web.core import DemoModel

    app = build_app(DemoModel(server[3], "cpu"), tmp_path)
    slots = {
        (app.fns[i].concurrency_id, app.fns[i].concurrency_limit) for i in (FORWARD, FORWARD_SLIDER)
    }
    assert slots == {("forward", 1)}


def test_image_bombs_are_refused_from_their_header_by_both_forward_events_at_once(server):
    """Finding 1: a 0.7 MB PNG of 13000x13000 RGBA pixels took the server from 477 MB to 2.4 GB
    (7.6 GB for two at once, one per forward event)."""
    url, process, log, _ = server
    bombs = {
        "13000x13000 RGBA": png_bomb(13000, 13000),
        "30000x30000 grey": png_bomb(30000, 30000, 0),
    }
    paths = {}
    for name, data in bombs.items():
        status, stored = upload(url, "bomb.png", data)
        assert status == 200 and len(data) < 1024**2, (name, status, stored)
        paths[name] = stored[0]
    before, _ = memory_mb(process)
    reset_peak_rss(process.pid)
    requests = [(event, path) for path in paths.values() for event in (FORWARD, FORWARD_SLIDER)]
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(
            lambda r: call_event(url, r[0], ["upload", 0, file_value(r[1]), 10, "0"]), requests
        ))  # fmt: skip
    messages = [error_of(a) for a in answers]
    expected = "the uploaded image has {:,} pixels, more than Pillow's limit of 16,777,216 allows; "
    expected += "this checkpoint expects 8x8 with 3 channel(s)"
    assert messages == [expected.format(13000**2)] * 2 + [expected.format(30000**2)] * 2
    _, peak = memory_mb(process)
    print(json.dumps({"bombs_rss_mb_before": round(before), "peak_mb": round(peak)}))
    assert peak - before < PEAK_MB, f"peak {peak:.0f} MB from {before:.0f} MB"
    assert process.poll() is None
    no_traceback(log)


def test_request_size_is_bounded_before_the_queue_and_messages_stay_short(server):
    """Finding 2: six 20 MB seeds from six sessions took the server from 695 to 939 MB, and the
    error message echoed all 20 MB."""
    url, process, log, _ = server
    before, _ = memory_mb(process)
    host, port = url.split("/")[2].split(":")
    for k in range(6):  # the headers of a 20 MB request: refused before its body is read
        connection = http.client.HTTPConnection(host, int(port), timeout=30)
        connection.putrequest("POST", "/gradio_api/queue/join")
        connection.putheader("Content-Type", "application/json")
        connection.putheader("Content-Length", str(20_000_000 + k))
        connection.endheaders()
        response = connection.getresponse()
        assert response.status == 413
        assert json.loads(response.read())["detail"] == (
            f"request of {20_000_000 + k:,} bytes; this server takes 65,536 at most"
        )
        connection.close()
    for k in range(20):  # just under the limit: it reaches difflab, which answers in one line
        data = [*GOOD[:2], "7" * 60_000, *GOOD[3:]]
        message = error_of(call_event(url, GENERATE, data, session=f"near{k}"))
        assert len(message) < 200 and message.endswith("... (60,002 characters)"), message
    after, _ = memory_mb(process)
    print(json.dumps({"request_size_rss_mb": [round(before), round(after)]}))
    assert after - before < GROWTH_MB, f"{before:.0f} -> {after:.0f} MB"
    no_traceback(log)


@pytest.mark.parametrize(
    "index, value, message",
    [
        (1, "abc", "steps must be a number, got 'abc'"),
        (1, math.nan, "steps must be a finite number, got nan"),
        (1, 1e400, "steps must be a finite number, got inf"),  # JSON 1e400 is infinite
        (1, 2.5, "steps must be an integer in 1..50, got 2.5"),
        (1, 5000, "steps must be an integer in 1..50, got 5000"),
        (2, "1e3", "seed (an integer or 'random') must be an integer in 0..4294967295, got '1e3'"),
        (3, [4], "number of images must be a number, got [4]"),
        (0, "euler-a", "unknown sampler 'euler-a'; expected one of ddpm, ddim, ipndm, dpmpp-2m, dpmpp-2m-sde, dpmpp-3m, unipc"),
        (5, math.nan, "guidance must be a finite number, got nan"),  # an unconditional model
        (5, "Infinity", "guidance must be a finite number, got 'Infinity'"),
        (5, "abc", "guidance must be a number, got 'abc'"),
        (6, {"x": 1}, "eta must be a number, got {'x': 1}"),
        (7, -1, "preview every k steps (0 = auto) must be an integer in 0..4, got -1"),
    ],
)  # fmt: skip
def test_every_bad_value_gets_its_message_without_a_traceback(server, index, value, message):
    """Findings 3 and 4: values that failed inside Gradio's preprocessing gave `error: null` and a
    traceback; steps 2.5 ran 2 steps, 1e400 ran 20, seed '1e3' became 1000, guidance NaN passed."""
    url, process, log, _ = server
    data = list(GOOD)
    data[index] = value
    assert error_of(call_event(url, GENERATE, data)) == message
    assert process.poll() is None
    no_traceback(log)


def test_bad_files_and_forward_values_get_their_message(server, tmp_path):
    url, _, log, _ = server
    status, stored = upload(url, "notes.png", b"this is a text file, not a picture")
    assert status == 200
    cases = [
        (["upload", 0, file_value(stored[0]), 10, "0"],
         "cannot read the uploaded image: cannot identify image file"),
        (["upload", 0, None, 10, "0"],
         "no image uploaded: drop one on the upload box, or pick 'dataset'"),
        (["sideways", 0, None, 10, "0"], "image must be 'dataset' or 'upload', got 'sideways'"),
        (["dataset", 0, None, 10.5, "0"], "t must be an integer in 0..49, got 10.5"),
        (["dataset", 0, None, 10, "x"], "seed (an integer or 'random') must be an integer in 0..4294967295, got 'x'"),
    ]  # fmt: skip
    assert error_of(call_event(url, FORWARD, ["upload", 0, "a string", 10, "0"])) == (
        "value 2 of event 3 must be an uploaded file or null"
    )  # refused before Gradio's own file model fails on it
    for data, message in cases:
        for event in (FORWARD, FORWARD_SLIDER):
            assert error_of(call_event(url, event, data)) == message, data
    assert error_of(call_event(url, 2, ["euler-a"])) == "unknown sampler 'euler-a'"  # private
    no_traceback(log)


def test_no_file_is_fetched_or_read_that_the_page_did_not_upload(server, tmp_path):
    """Finding 5: Gradio downloads a public URL a client names as a file; the demo fetches
    nothing. A loopback server records whether anything came to fetch its file."""
    url, _, log, _ = server
    hits = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            hits.append(self.path)
            self.send_response(200)
            self.end_headers()
            self.wfile.write(png_bomb(8, 8))

        def log_message(self, *args):
            pass

    bait = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=bait.serve_forever, daemon=True).start()
    secret = tmp_path / "secret.png"
    secret.write_bytes(png_bomb(8, 8))
    try:
        for path in (f"http://127.0.0.1:{bait.server_port}/x.png", "https://example.com/x.png",
                     str(secret), "/etc/passwd", "../../etc/passwd"):  # fmt: skip
            answer = call_event(url, FORWARD, ["upload", 0, file_value(path), 10, "0"])
            assert answer == (400, {"detail": "a file must be one uploaded to this page"}), path
    finally:
        bait.shutdown()
    assert hits == []
    no_traceback(log)


def test_no_server_path_is_shown_and_nothing_is_left_behind(server):
    """Finding 5: messages and every served file URL showed the server's temporary path, and each
    generation left ~0.8 MB in the temporary folder for 10-15 minutes."""
    url, _, log, _ = server
    status, stored = upload(url, "probe.png", png_bomb(8, 8))
    assert status == 200 and stored[0].startswith("upload/"), stored  # not the server's path
    # where Gradio keeps files: the server's private folder that holds this upload
    (held,) = Path(tempfile.gettempdir()).glob(f"difflab-serve-*/gradio/{stored[0][7:]}")
    temp = held.parents[1]
    files_before = sorted(p for p in temp.rglob("*") if p.is_file())
    for seed in range(10):
        status, message = call_event(url, GENERATE, [*GOOD[:2], str(seed), *GOOD[3:]])
        assert status == 200 and message["success"]
        text = json.dumps(message)
        assert "gradio_api/file=" not in text and str(temp.parent) not in text
        assert text.count("data:image/png;base64,") >= 2 and "data:image/gif;base64," in text
    status, message = call_event(url, FORWARD, ["dataset", 0, None, 10, "0"])
    assert status == 200 and "gradio_api/file=" not in json.dumps(message)
    files_after = sorted(p for p in temp.rglob("*") if p.is_file())
    assert files_after == files_before  # the pictures travel in the answer; no file is written
    no_traceback(log)


def test_a_bounded_fuzz_run_gets_an_answer_for_every_request(server):
    """A few hundred malformed requests: random types, sizes, missing and extra fields, random
    bytes as bodies and as uploads. Each is answered, the server stays up, logs no traceback,
    and its memory ends within a bound of where it began."""
    url, process, log, _ = server
    rng = random.Random(39)
    before, _ = memory_mb(process)
    counts: dict[str, int] = {}

    def junk(depth=0):
        kind = rng.choice(["int", "float", "str", "long", "none", "bool", "list", "dict", "file",
                           "special"])  # fmt: skip
        if depth > 2 and kind in ("list", "dict"):
            kind = "str"
        return {
            "int": lambda: rng.choice([0, 1, -1, 2**31, 2**64, rng.randint(-999, 999)]),
            "float": lambda: rng.choice([0.5, -2.5, 1e308, 1e-308, rng.uniform(-50, 50)]),
            "str": lambda: rng.choice(["", "ddim", "random", "1e3", "\x00", "é", "<script>"]),
            "long": lambda: "x" * rng.randint(100, 30_000),
            "none": lambda: None,
            "bool": lambda: rng.choice([True, False]),
            "list": lambda: [junk(depth + 1) for _ in range(rng.randint(0, 4))],
            "dict": lambda: {rng.choice(["a", "path", "meta", "url"]): junk(depth + 1)},
            "file": lambda: file_value(rng.choice(["/etc/hosts", "x.png", "http://10.0.0.1/a"])),
            "special": lambda: rng.choice([math.nan, math.inf, -math.inf]),
        }[kind]()

    def one(k):
        shape = rng.choice(["values", "values", "count", "fields", "bytes", "upload"])
        fn = rng.choice([GENERATE, STOP, 2, FORWARD, FORWARD_SLIDER])
        sizes = {GENERATE: 8, STOP: 0, 2: 1, FORWARD: 5, FORWARD_SLIDER: 5}
        if shape == "values":
            body = None
            data = [junk() for _ in range(sizes[fn])]
        elif shape == "count":
            body, data = None, [junk() for _ in range(rng.choice([0, 1, 3, 9, 20]))]
        elif shape == "fields":
            fields = {"data": [junk() for _ in range(sizes[fn])], "fn_index": fn,
                      "session_hash": f"f{k}", "event_data": junk(), "trigger_id": junk(),
                      rng.choice(["extra", "batched", "oauth_token"]): junk()}  # fmt: skip
            del fields[rng.choice(["data", "fn_index", "session_hash", "event_data"])]
            body, data = json.dumps(fields).encode(), None
        elif shape == "bytes":
            body, data = rng.randbytes(rng.randint(0, 5000)), None
        else:
            status, stored = upload(url, rng.choice(["a.png", "b.gif", "c"]),
                                    rng.randbytes(rng.randint(0, 50_000)))  # fmt: skip
            assert status == 200, stored
            body, fn = None, rng.choice([FORWARD, FORWARD_SLIDER])
            data = ["upload", junk(), file_value(stored[0]), junk(), junk()]
        status, answer = call_event(url, fn, data, session=f"f{k}", body=body, timeout=60)
        if status == 200:
            assert answer.get("msg") == "process_completed", answer
            if not answer["success"]:
                error = answer["output"].get("error")
                assert isinstance(error, str) and error and "\n" not in error, answer
                assert len(error) < 300, error
            outcome = "ran" if answer["success"] else "message"
        else:
            assert 400 <= status < 500, (status, answer, data, body)
            assert isinstance(answer.get("detail"), (str, list)), answer
            outcome = f"refused {status}"
        counts[outcome] = counts.get(outcome, 0) + 1

    start = time.monotonic()
    done = 0
    while done < FUZZ_REQUESTS and time.monotonic() - start < FUZZ_SECONDS:
        one(done)
        done += 1
    after, _ = memory_mb(process)
    print(json.dumps({"fuzz_requests": done, "seconds": round(time.monotonic() - start, 1),
                      "outcomes": counts, "rss_mb": [round(before), round(after)]}))  # fmt: skip
    assert done >= 100, counts
    assert process.poll() is None
    assert after - before < GROWTH_MB, f"{before:.0f} -> {after:.0f} MB"
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.status == 200
    assert call_event(url, GENERATE, GOOD)[1]["success"]
    no_traceback(log)

"""The web demo end to end (slow): `difflab serve` on a tiny checkpoint in a child process,
driven by headless Chromium through Playwright (Debian's chromium, no browser download) and by 8
gradio_client clients at once. Needs the demo extra: pip install -e ".[demo]"."""

import concurrent.futures
import io
import os
import shutil
import urllib.request

import numpy as np
import pytest
import torch
from PIL import Image

from difflab.checkpoint import save_checkpoint
from difflab.cli import main
from difflab.config import DiffusionConfig, ModelConfig, RunConfig, TrainConfig
from difflab.models.unet import UNet
from difflab.web.core import data_from_html
from difflab.web.process import running_server

pytestmark = pytest.mark.slow

LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "[::1]"}
STEPS = 12  # DDIM steps in the page tests: several frames, a few seconds on a CPU
# Images of the Stop test's 200 DDPM steps: enough that the run is still going when Stop is
# pressed on a fast, idle machine (64 tiny images finished first there, and Stop found nothing).
STOP_IMAGES = 1024
CLIENTS = 16  # gradio_client clients at once against a queue of 2


def chromium_path():
    for candidate in (os.environ.get("DIFFLAB_CHROMIUM"), "chromium", "chromium-browser"):
        if candidate and shutil.which(candidate):
            return shutil.which(candidate)
    pytest.skip("no chromium on this machine (apt-get install -y chromium)")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """An 8 px U-Net with its initial weights (T = 200, so Stop has steps to stop): the page and
    the load need nothing more."""
    root = tmp_path_factory.mktemp("serve")
    mc = ModelConfig(image_size=8, in_channels=3, base_channels=8, channel_mults=(1, 2),
                     num_res_blocks=1)  # fmt: skip
    config = RunConfig(model=mc, diffusion=DiffusionConfig(timesteps=200), train=TrainConfig())
    torch.manual_seed(0)
    return save_checkpoint(root / "ckpt" / "model.safetensors", config, UNet(mc).state_dict())


@pytest.fixture(scope="module")
def server(checkpoint, tmp_path_factory):
    """The server, with its working directory in the checkpoint's folder (neither is served)."""
    pytest.importorskip("gradio")
    log = tmp_path_factory.mktemp("log") / "serve.log"
    with running_server(
        checkpoint, "--device", "cpu", "--queue-size", "2", "--concurrency", "1",
        "--max-images", str(STOP_IMAGES), cwd=checkpoint.parent, log=log,
    ) as (url, process):  # fmt: skip
        yield url, process, log


@pytest.fixture
def page(server):
    """A headless Chromium page on the demo, recording the host of every request it makes."""
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium_path(), headless=True)
        page = browser.new_page(viewport={"width": 1280, "height": 1000})
        page.hosts = []
        page.on("request", lambda r: page.hosts.append(r.url.split("/")[2]))
        page.goto(server[0])
        page.wait_for_selector("#generate")
        yield page
        browser.close()


def fetch(url):
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.read()


def decode(data):
    with Image.open(io.BytesIO(data)) as img:
        return np.asarray(img.convert("RGB"))


def save_screenshot(page, tmp_path, name):
    path = tmp_path / name
    page.screenshot(path=str(path), full_page=True)
    if os.environ.get("DIFFLAB_SCREENSHOT_DIR"):
        folder = os.environ["DIFFLAB_SCREENSHOT_DIR"]
        os.makedirs(folder, exist_ok=True)
        shutil.copy(path, folder)
    return path


WATCH_FRAMES = """() => {
  window.frames_seen = [];
  const look = () => {
    const img = document.querySelector('#x_t img');
    if (img && img.src && !window.frames_seen.includes(img.src)) window.frames_seen.push(img.src);
  };
  new MutationObserver(look).observe(document.body,
    {subtree: true, childList: true, attributes: true, attributeFilter: ['src']});
}"""


def test_page_streams_frames_then_the_final_image_offline(page, server, checkpoint, tmp_path):
    page.fill("#steps input", str(STEPS))
    page.fill("#seed textarea", "7")
    page.fill("#num_images input", "4")
    page.fill("#every input", "1")
    page.evaluate(WATCH_FRAMES)
    page.click("#generate")
    page.wait_for_selector("#final img", timeout=60_000)
    page.wait_for_function(
        "document.querySelector('#status textarea').value.startsWith('done')", timeout=30_000
    )
    assert page.input_value("#seed_used textarea") == "7"
    frames = page.evaluate("window.frames_seen")
    assert len(frames) >= 2, frames
    first, last = decode(fetch(frames[0])), decode(fetch(frames[-1]))
    assert first.shape == last.shape and not np.array_equal(first, last)  # it denoised
    final = decode(fetch(page.get_attribute("#final img", "src")))
    assert final.ndim == 3 and final.shape[0] > 100 and final.std() > 0  # an image, not blank
    # the same seed and settings through `difflab sample` give the same grid
    out = tmp_path / "sample.png"
    assert main(["sample", "--checkpoint", str(checkpoint), "--sampler", "dpmpp-2m-sde",
                 "--steps", str(STEPS), "--seed", "7", "--num-images", "4", "--device", "cpu",
                 "--out", str(out)]) == 0  # fmt: skip
    assert np.array_equal(final, decode(out.read_bytes()))
    shot = save_screenshot(page, tmp_path, "demo_generate.png")
    assert decode(shot.read_bytes()).shape[1] == 1280
    assert set(page.hosts) <= {server[0].split("/")[2]}, set(page.hosts)
    assert all(h.split(":")[0] in LOOPBACK_HOSTS for h in page.hosts)


def test_an_out_of_range_value_shows_its_message_in_the_page(page, server, tmp_path):
    page.fill("#steps input", "5000")
    page.click("#generate")
    message = page.get_by_text("steps must be an integer in 1..200, got 5000")
    message.first.wait_for(timeout=30_000)
    assert "Traceback" not in page.content()
    save_screenshot(page, tmp_path, "demo_error.png")
    assert "Traceback" not in server[2].read_text()  # a user's mistake is not a server error


def test_an_uploaded_image_goes_through_the_forward_process_without_a_server_path(
    page, server, tmp_path
):
    """The upload box, then Show: x_t of the uploaded picture. The page is told where its upload
    lies only by the alias ``upload/...`` (the request guard maps it back), never a server path."""
    Image.fromarray(np.full((8, 8, 3), 180, np.uint8)).save(tmp_path / "mine.png")
    answers = []
    page.on("response", lambda r: answers.append(r) if "/upload" in r.url else None)
    page.get_by_role("tab", name="Forward process").click()
    page.set_input_files("#upload input[type=file]", str(tmp_path / "mine.png"))
    page.wait_for_selector("#upload img", timeout=30_000)  # the preview, served by the alias
    page.check("#source input[value='upload']")
    page.click("#show")
    page.wait_for_selector("#fwd_x0 img", timeout=30_000)
    x0 = decode(fetch(page.get_attribute("#fwd_x0 img", "src")))
    assert (x0[x0.shape[0] // 2, x0.shape[1] // 2] == 180).all()  # the upload, not a test image
    assert "alpha_bar_t =" in page.input_value("#info textarea")
    save_screenshot(page, tmp_path, "demo_upload.png")
    stored = [a.json() for a in answers if a.request.method == "POST"]
    assert stored and all(p.startswith("upload/") for p in stored[0]), stored
    assert "difflab-serve" not in page.content()
    assert page.get_attribute("#upload img", "src").split("file=")[1].startswith("upload/")
    assert all(h.split(":")[0] in LOOPBACK_HOSTS for h in page.hosts)
    assert "Traceback" not in server[2].read_text()


def test_stop_ends_the_generation_and_the_next_one_runs(page):
    page.click("#sampler input")
    page.get_by_role("option", name="ddpm").click()
    page.fill("#steps input", "200")
    page.fill("#num_images input", str(STOP_IMAGES))
    page.fill("#every input", "1")
    page.click("#generate")
    page.wait_for_function(
        "document.querySelector('#status textarea').value.startsWith('step')", timeout=60_000
    )
    page.click("#stop")
    page.wait_for_function(
        "document.querySelector('#status textarea').value === 'stopped'", timeout=30_000
    )
    page.wait_for_timeout(1500)
    assert page.input_value("#status textarea") == "stopped"  # no frame came after it
    assert page.locator("#final img").count() == 0  # it never reached the end
    page.fill("#steps input", "5")
    page.click("#generate")
    page.wait_for_function(
        "document.querySelector('#status textarea').value.startsWith('done')", timeout=60_000
    )
    assert page.locator("#final img").count() == 1


def test_sixteen_clients_at_once_finish_or_are_told_busy(server, checkpoint, tmp_path):
    """16 gradio_client clients at once against a queue of 2 with 1 generation at a time: each
    gets its images or a "queue is full" answer, the server stays up, and every image equals
    `difflab sample`'s for the same seed."""
    client_mod = pytest.importorskip("gradio_client")
    url = server[0]

    def one(k):
        client = client_mod.Client(url, verbose=False, download_files=str(tmp_path / f"c{k}"))
        try:
            out = client.predict("ddim", 10, "3", 4, None, 1.0, 0.0, 0, api_name="/generate")
        except Exception as err:  # the client's error for a refused or failed job
            return "error", str(err)
        return "ok", out

    with concurrent.futures.ThreadPoolExecutor(CLIENTS) as pool:
        results = list(pool.map(one, range(CLIENTS)))
    ok = [r for kind, r in results if kind == "ok"]
    errors = [r for kind, r in results if kind == "error"]
    assert ok and len(ok) + len(errors) == CLIENTS, results
    assert all("queue is full" in e.lower() for e in errors), errors
    assert server[1].poll() is None  # still running
    reference = tmp_path / "ref.png"
    assert main(["sample", "--checkpoint", str(checkpoint), "--sampler", "ddim", "--steps", "10",
                 "--seed", "3", "--num-images", "4", "--device", "cpu",
                 "--out", str(reference)]) == 0  # fmt: skip
    for out in ok:
        assert out[2].startswith("done") and out[6] == "3"
        png = data_from_html(out[4])  # the PNG download link holds the file
        assert np.array_equal(decode(png), decode(reference.read_bytes()))
    # and it still serves a page, and a generation, afterwards
    assert b"<html" in fetch(url).lower()
    assert one(99)[0] == "ok"


def test_the_queue_cannot_be_bypassed_uploads_are_limited_and_the_checkpoint_is_not_served(
    server, checkpoint
):
    httpx = pytest.importorskip("httpx")

    url = server[0]
    body = {"data": ["ddim", 5, "1", 1, None, 1.0, 0.0, 0]}
    direct = httpx.post(url + "gradio_api/run/generate", json=body, timeout=10)
    assert direct.status_code == 404 and "queue" in direct.text.lower()
    for path in (checkpoint, checkpoint.parent / "serve_cwd_file.txt"):
        path.parent.joinpath("serve_cwd_file.txt").write_text("secret")
        got = httpx.get(f"{url}gradio_api/file={path}", timeout=10)
        assert got.status_code in (403, 404), (path, got.status_code)
    # uploads: over --max-upload (default 1 MB) refused, a small one taken
    big = {"files": ("big.png", b"\0" * (1024 * 1024 + 1), "image/png")}
    refused = httpx.post(url + "gradio_api/upload", files=big, timeout=30)
    assert refused.status_code == 413, (refused.status_code, refused.text)
    small = {"files": ("small.png", b"\0" * 1000, "image/png")}
    assert httpx.post(url + "gradio_api/upload", files=small, timeout=30).status_code == 200

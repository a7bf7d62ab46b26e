"""The Gradio face of the demo: two tabs, thin handlers over ``difflab.web.core``, launched
offline, bounded and local (docs/web_demo.md).

Offline: the switches below are set before Gradio is imported (no analytics, no version check,
no Hugging Face telemetry or downloads), the theme uses system fonts only (no Google Fonts), and
``launch`` gets no share link, no SSR (no Node server), no PWA, no MCP server, no monitoring page
and no run history. Bounded: one queue of limited size with a concurrency limit, the REST route
that bypasses it closed (``queue(api_open=False)``), uploads size-limited, every value checked
on the server, the checkpoint's folder blocked from the file route, and Gradio's files kept in a
private temporary folder that is emptied as it goes and removed at exit.
"""

from __future__ import annotations

import os

# Before `import gradio`: these are read at import time or at Blocks() time.
for _name, _value in {
    "GRADIO_ANALYTICS_ENABLED": "False",  # no analytics events, no version check
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "HF_HUB_OFFLINE": "1",  # nothing in this process downloads from the Hub
    "DO_NOT_TRACK": "1",
    "GRADIO_SSR_MODE": "False",
    "GRADIO_MCP_SERVER": "False",
    "GRADIO_RUN_HISTORY": "False",
    "GRADIO_SHARE": "False",
}.items():
    os.environ[_name] = _value

import contextlib  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import uuid  # noqa: E402
from collections.abc import Iterator  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import gradio as gr  # noqa: E402
from PIL import Image  # noqa: E402
from starlette.middleware import Middleware  # noqa: E402

from difflab.web.core import (  # noqa: E402
    EVERY_CLASS,
    MAX_GUIDANCE,
    RANDOM_SEED,
    DemoModel,
    Frame,
    download_html,
    picture_html,
    shown,
)
from difflab.web.guard import RequestGuard, parse_size  # noqa: E402

LOOPBACK = ("127.0.0.1", "localhost", "::1")
SYSTEM_FONTS = ["ui-sans-serif", "system-ui", "-apple-system", "Segoe UI", "Roboto", "sans-serif"]
MONO_FONTS = ["ui-monospace", "SFMono-Regular", "Menlo", "Consolas", "monospace"]
STOP_WAIT_S = 30.0  # how long the Stop button waits for the generation to end before it answers
MAX_PIXELS = 4096 * 4096  # Pillow's bomb limit in the server (uploads are checked from the header)
UPLOAD_PX = 192  # height of the upload box and of the picture in it
# an 8 px upload fills its box, each pixel a sharp square
CSS = "#upload img { width: 100%; height: 100%; object-fit: contain; image-rendering: pixelated; }"
SESSIONS = 256  # page sessions whose values Gradio keeps; each request is at most 64 kB


@dataclass(frozen=True)
class ServeOptions:
    """How the server protects itself (``difflab serve`` flags)."""

    host: str = "127.0.0.1"  # interface to listen on; loopback unless asked
    port: int = 7860  # TCP port
    concurrency: int = 1  # generations that run at once (each uses every CPU core)
    queue_size: int = 16  # requests that may wait; beyond it a request is told the queue is full
    max_upload: str = "1mb"  # largest upload the forward-process tab accepts


def offline_theme() -> gr.themes.Base:
    """Gradio's default look with system fonts only: no font is fetched from anywhere."""
    return gr.themes.Default(font=SYSTEM_FONTS, font_mono=MONO_FONTS)


def _error(err: Exception) -> gr.Error:
    """A ValueError from the library as Gradio's in-page message (no traceback on the server
    either: it is the user's mistake, not the server's)."""
    return gr.Error(str(err), print_exception=False)


class Handlers:
    """The page's event handlers: parse, validate, call ``DemoModel``; one stop flag per page
    session so Stop ends that session's generation between two steps."""

    def __init__(self, demo: DemoModel, work_dir: Path) -> None:
        self.demo = demo
        self.work_dir = work_dir  # per-request output folders, inside the server's temp folder
        work_dir.mkdir(parents=True, exist_ok=True)
        self._stops: dict[str, tuple[threading.Event, threading.Event]] = {}  # (stop, ended)
        self._stops_lock = threading.Lock()

    def generate(
        self,
        sampler: str,
        steps: Any,
        seed: Any,
        num_images: Any,
        class_choice: Any,
        guidance: Any,
        eta: Any,
        every: Any,
        request: gr.Request,
    ) -> Iterator[tuple[Any, ...]]:
        """Stream (x_t, x0_pred, status, final grid, PNG, GIF, seed used) as sampling goes: the
        pictures and the downloads as HTML that holds them (no file on the server, no path)."""
        try:
            req = self.demo.parse_request(
                sampler=sampler, steps=steps, seed=seed, num_images=num_images,
                class_choice=class_choice, guidance=guidance, eta=eta, every=every,
            )  # fmt: skip
        except ValueError as err:
            raise _error(err) from None
        session = request.session_hash or uuid.uuid4().hex
        stop, ended = threading.Event(), threading.Event()
        with self._stops_lock:
            self._stops[session] = stop, ended
        out = Path(tempfile.mkdtemp(prefix="request-", dir=self.work_dir))
        seed_text, finished = str(req.seed), False
        try:
            yield (None, None, f"starting: {req.steps} steps, seed {req.seed}", None, None, None,
                   seed_text)  # fmt: skip
            with contextlib.closing(self.demo.stream(req, out, stop)) as items:
                for item in items:
                    if isinstance(item, Frame):
                        if not stop.is_set():  # no frame may overwrite "stopping" on the page
                            yield (picture_html(item.x_t, "x_t"),
                                   picture_html(item.x0_pred, "predicted x0"), item.status, None,
                                   None, None, seed_text)  # fmt: skip
                        continue
                    finished = True
                    steps = f"{req.steps} step" + ("s" if req.steps > 1 else "")
                    done = f"done: {req.num_images} images, {steps}, seed {req.seed}"
                    yield (gr.skip(), gr.skip(), done, picture_html(item.grid, "final images"),
                           download_html(item.png, f"PNG ({item.png.name})"),
                           download_html(item.gif, f"GIF ({item.gif.name})"),
                           seed_text)  # fmt: skip
            if not finished:
                yield gr.skip(), gr.skip(), "stopped", None, None, None, seed_text
        except ValueError as err:
            raise _error(err) from None
        finally:
            stop.set()
            with self._stops_lock:
                if self._stops.get(session) == (stop, ended):
                    del self._stops[session]
            ended.set()
            shutil.rmtree(out, ignore_errors=True)  # the page's HTML holds what it shows

    def stop(self, request: gr.Request) -> str:
        """The Stop button: the running generation of this page ends after its current step;
        the answer waits for that end, so it says "stopped" like the generation's last update,
        whichever of the two reaches the page last."""
        with self._stops_lock:
            run = self._stops.get(request.session_hash or "")
        if run is None:
            return "nothing to stop"
        stop, ended = run
        stop.set()
        return "stopped" if ended.wait(STOP_WAIT_S) else "stopping"

    def forward(self, source: Any, index: Any, upload: Any, t: Any, seed: Any) -> tuple:
        """The forward-process tab: the image, x_t, the noise and the schedule's curves at t."""
        try:
            if source not in ("dataset", "upload"):
                raise ValueError(f"image must be 'dataset' or 'upload', got {shown(source)}")
            path = uploaded_path(upload) if source == "upload" else None
            if source == "upload" and path is None:
                raise ValueError("no image uploaded: drop one on the upload box, or pick 'dataset'")
            x0 = self.demo.forward_image(index, path)
            view = self.demo.forward_view(x0, t, seed)
        except ValueError as err:
            raise _error(err) from None
        return (
            picture_html(view.x0, "x0"), picture_html(view.x_t, "x_t"),
            picture_html(view.eps, "noise"), picture_html(view.curves, "schedule"),
            f"t = {int(float(t))}: {view.status}",
        )  # fmt: skip

    def sampler_changed(self, sampler: Any) -> tuple:
        """A new sampler: its default steps; eta only where it applies (DDIM)."""
        if sampler not in self.demo.samplers:
            raise _error(ValueError(f"unknown sampler {shown(sampler)}"))
        steps = gr.update(value=self.demo.default_steps(sampler))
        return steps, gr.update(visible=sampler == "ddim")


def build_app(demo: DemoModel, work_dir: str | os.PathLike[str]) -> gr.Blocks:
    """The page: "Generate" (live denoising) and "Forward process" (x_t at a chosen t)."""
    handlers = Handlers(demo, Path(work_dir))
    conditional, distilled = demo.num_classes > 0, demo.distilled
    with gr.Blocks(title="difflab demo", analytics_enabled=False, delete_cache=(300, 600)) as app:
        gr.Markdown(f"# difflab demo\n{demo.describe()}")
        with gr.Tabs():
            with gr.Tab("Generate"):
                with gr.Row():
                    with gr.Column(scale=1):
                        if distilled:
                            sampler = gr.Dropdown(  # hidden; any value is ignored
                                ["consistency", *demo.samplers], value="consistency", label="Sampler",
                                info="distilled model: its own 1-4 step sampler", visible=False,
                                elem_id="sampler",
                            )  # fmt: skip
                            steps = gr.Radio(
                                demo.step_choices, value=1, label="Steps",
                                info="network evaluations; 1 is instant", elem_id="steps",
                            )  # fmt: skip
                        else:
                            sampler = gr.Dropdown(
                                demo.samplers, value=demo.default_sampler, label="Sampler",
                                elem_id="sampler",
                            )  # fmt: skip
                            steps = gr.Number(
                                demo.default_steps(), precision=0,
                                label=f"Steps (1-{demo.num_timesteps})", elem_id="steps",
                            )  # fmt: skip
                        seed = gr.Textbox(
                            "0", label=f"Seed (0-4294967295 or '{RANDOM_SEED}')", elem_id="seed"
                        )
                        num_images = gr.Number(
                            16, precision=0, label=f"Images (1-{demo.max_images})",
                            elem_id="num_images",
                        )  # fmt: skip
                        class_choice = gr.Dropdown(
                            demo.class_choices or [EVERY_CLASS], value=EVERY_CLASS, label="Class",
                            visible=conditional, elem_id="class",
                        )  # fmt: skip
                        guidance = gr.Number(
                            1.0, label=f"Guidance scale (0-{MAX_GUIDANCE:g}; 1 = plain)",
                            visible=conditional and not distilled, elem_id="guidance",
                        )  # fmt: skip
                        eta = gr.Slider(
                            0.0, 1.0, value=0.0, step=0.05, label="eta (DDIM noise)",
                            visible=False, elem_id="eta",
                        )  # fmt: skip
                        every = gr.Number(
                            0, precision=0, label="Preview every k steps (0 = about 20 previews)",
                            elem_id="every",
                        )  # fmt: skip
                        with gr.Row():
                            run = gr.Button("Generate", variant="primary", elem_id="generate")
                            stop = gr.Button("Stop", variant="stop", elem_id="stop")
                        status = gr.Textbox(label="Status", interactive=False, elem_id="status")
                        seed_used = gr.Textbox(
                            label="Seed used", interactive=False, elem_id="seed_used"
                        )
                    with gr.Column(scale=2):
                        with gr.Row():
                            x_t = picture("x_t (noisy sample)", "x_t")
                            x0_pred = picture("predicted x0", "x0_pred")
                        final = picture("final images", "final")
                        with gr.Row():
                            png = picture("PNG", "png")
                            gif = picture("GIF", "gif")
                run.click(
                    handlers.generate,
                    [sampler, steps, seed, num_images, class_choice, guidance, eta, every],
                    [x_t, x0_pred, status, final, png, gif, seed_used],
                    api_name="generate", preprocess=False,
                )  # fmt: skip
                # Stop is cooperative, not Gradio's `cancels`: a cancelled generator never sends
                # its last update, so a frame already on its way could leave "step k/T" showing
                stop.click(handlers.stop, None, status, api_name="stop", concurrency_limit=None)
                if not distilled:
                    sampler.change(
                        handlers.sampler_changed, sampler, [steps, eta], api_visibility="private",
                        preprocess=False,
                    )  # fmt: skip
            with gr.Tab("Forward process"):
                _forward_tab(demo, handlers)
    return app


def _forward_tab(demo: DemoModel, handlers: Handlers) -> None:
    mc = demo.config.model
    try:
        count = demo.dataset().num_images
        note = f"image from the {demo.config.train.data} test split"
    except ValueError as err:
        count, note = 0, str(err)
    with gr.Row():
        with gr.Column(scale=1):
            source = gr.Radio(
                ["dataset", "upload"], value="dataset" if count else "upload", label="Image",
                info=note, elem_id="source",
            )  # fmt: skip
            index = gr.Slider(
                0, max(count - 1, 1), value=0, step=1, label="Test image index",
                visible=count > 0, elem_id="index",
            )  # fmt: skip
            upload = gr.Image(
                label=f"Upload ({mc.image_size}x{mc.image_size}, {mc.in_channels} channel(s))",
                type="filepath", image_mode=None, sources=["upload"], buttons=[], elem_id="upload",
                height=UPLOAD_PX,  # an 8 px upload is shown at this height, not at its own
            )  # fmt: skip
            t = gr.Slider(
                0, demo.num_timesteps - 1, value=demo.num_timesteps // 2, step=1,
                label=f"t (0-{demo.num_timesteps - 1})", elem_id="t",
            )  # fmt: skip
            noise_seed = gr.Textbox("0", label="Noise seed", elem_id="noise_seed")
            show = gr.Button("Show", variant="primary", elem_id="show")
            info = gr.Textbox(label="alpha_bar and SNR at t", interactive=False, elem_id="info")
        with gr.Column(scale=2):
            with gr.Row():
                x0 = picture("x0", "fwd_x0")
                xt = picture("x_t", "fwd_x_t")
                eps = picture("noise eps (+-3 sigma)", "fwd_eps")
            curves = picture("schedule", "curves")
    inputs = [source, index, upload, t, noise_seed]
    outputs = [x0, xt, eps, curves, info]
    # both events decode an upload: one slot between them, so two requests cannot decode at once
    for event, visibility in ((show.click, "public"), (t.release, "private")):
        event(
            handlers.forward, inputs, outputs, api_name="forward" if visibility == "public" else None,
            api_visibility=visibility, preprocess=False, concurrency_id="forward",
            concurrency_limit=1,
        )  # fmt: skip


def picture(label: str, elem_id: str) -> gr.HTML:
    """An output that shows an image (or a download link) as HTML holding the file's bytes."""
    return gr.HTML(label=label, show_label=True, container=True, elem_id=elem_id, padding=False)


def uploaded_path(upload: Any) -> str | None:
    """The server path of the upload box's file (Gradio's file data; the request guard has
    checked that it lies in the upload folder), or None when nothing was uploaded."""
    if upload in (None, ""):
        return None
    path = upload.get("path") if isinstance(upload, dict) else None
    if not isinstance(path, str):
        raise ValueError("the upload must be an image uploaded with the upload box")
    return path


def is_loopback(host: str) -> bool:
    return host in LOOPBACK or host.startswith("127.")


def blocked_paths(checkpoint: Path, work_dir: Path) -> list[str]:
    """The checkpoint file and its folder, never served by the file route (the folder unless
    Gradio's own files live inside it, which would then be blocked too)."""
    folder = checkpoint.resolve().parent
    paths = [str(checkpoint.resolve())]
    if not work_dir.resolve().is_relative_to(folder):
        paths.append(str(folder))
    return paths


def serve(
    demo: DemoModel, options: ServeOptions, work_dir: Path, *, block: bool = True
) -> gr.Blocks:
    """Launch the page on ``options.host:options.port``; with ``block`` until Ctrl-C.

    In front of Gradio sits ``RequestGuard``: a request of over 64 kB (an upload: over
    ``--max-upload``), an event the page does not have or a file the page did not upload is
    refused before Gradio reads it. Pillow refuses images of over ``MAX_PIXELS`` in this process.
    """
    Image.MAX_IMAGE_PIXELS = MAX_PIXELS
    max_upload = parse_size(options.max_upload)
    app = build_app(demo, work_dir)
    app.queue(
        api_open=False,  # POST /gradio_api/run/... (no queue) answers 404
        max_size=options.queue_size,
        default_concurrency_limit=options.concurrency,
    )
    guard = Middleware(
        RequestGuard,  # type: ignore[arg-type]
        inputs={
            index: tuple("file" if isinstance(block, gr.Image) else "value" for block in fn.inputs)
            for index, fn in app.fns.items()
        },
        upload_dir=gr.utils.get_upload_folder(), max_upload=max_upload,
    )  # fmt: skip
    app.launch(
        server_name=options.host, server_port=options.port, share=False, inbrowser=False,
        ssr_mode=False, pwa=False, mcp_server=False, enable_monitoring=False,
        run_history=False, footer_links=["api"], max_file_size=max_upload,
        blocked_paths=blocked_paths(demo.path, work_dir), allowed_paths=[],
        theme=offline_theme(), css=CSS, show_error=False, quiet=True,
        state_session_capacity=SESSIONS, app_kwargs={"middleware": [guard]},
        prevent_thread_lock=not block,
    )  # fmt: skip
    return app

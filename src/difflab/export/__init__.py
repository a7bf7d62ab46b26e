"""Exports: a checkpoint's network in a format other programs run, with what a sampler needs.

  onnx.py       ``export_onnx``: the denoising network (or a GAN's generator) as ONNX, a
                latent model's decoder beside it, and a JSON of the schedule, the prediction
                and the sampling plan (``difflab export --onnx``; docs/export.md)
  diffusers.py  ``export_diffusers``: a pixel diffusion model as a folder that diffusers'
                ``DDPMPipeline.from_pretrained`` loads: a UNet2DModel holding its weights, a
                DDPMScheduler with its schedule, a model card (``difflab export --diffusers``)
  web.py        ``export_web``: a static folder (index.html, the ONNX network, a JavaScript
                sampler, onnxruntime-web) that draws in the visitor's browser, and its Python
                twin ``page_noise`` / ``sample_page`` (``difflab export --web``)

An exporter is a face: it asks the kind table (``kinds.load_model``, ``kinds.plan_sampling``) what
a checkpoint is and how it is drawn, and adds no checks of its own. Its extra's packages (onnx,
onnxruntime; diffusers) are imported when an export runs, so difflab imports without them.
"""

from difflab.export.diffusers import DiffusersExportResult, export_diffusers
from difflab.export.onnx import OPSET, ExportResult, export_onnx
from difflab.export.web import WebExportResult, export_web

__all__ = [
    "OPSET", "DiffusersExportResult", "ExportResult", "WebExportResult", "export_diffusers",
    "export_onnx", "export_web",
]  # fmt: skip

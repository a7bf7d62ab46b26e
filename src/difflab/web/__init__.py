"""The web demo (``difflab serve``): a Gradio page that draws images live and shows the forward
process.

Two layers, so the logic is tested without a browser or even Gradio installed:

  core.py   what the page does, in plain Python: ``DemoModel`` loads a checkpoint, turns a
            request into the sampling plan ``difflab sample`` makes (``parse_request``, through
            ``kinds.plan_sampling``), streams the denoising as frames while it executes that plan
            (``stream``), and computes the forward-process view (``forward_view``). Errors are
            ``ValueError`` with one line.
  app.py    the Gradio face: ``build_app`` lays out the tabs and wires thin handlers onto
            ``DemoModel``; ``serve`` launches it offline, bounded and local
            (docs/web_demo.md). Needs the ``demo`` extra: ``pip install -e ".[demo]"``.
  process.py  ``difflab serve`` as a child process (free port, wait until it answers), for the
            browser tests and the serve benchmarks.
"""

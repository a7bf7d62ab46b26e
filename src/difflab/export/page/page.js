// difflab's static page: loads the network into onnxruntime-web (WebAssembly, one thread) from
// this folder's files, and draws 16 images with sampler.js, showing each step and the time the
// computation took. Every URL is relative: nothing leaves the site the page came from.
"use strict";
(function () {
  const S = self.DifflabSampler;
  const $ = (id) => document.getElementById(id);
  const MAX_SEED = 4294967295;
  const MAX_FRAMES = 24; // thumbnails of at most this many steps

  async function fetchOk(name) {
    const response = await fetch(name);
    if (!response.ok) throw new Error(`${name}: HTTP ${response.status}`);
    return response;
  }

  async function gunzip(name) {
    const body = (await fetchOk(name)).body.pipeThrough(new DecompressionStream("gzip"));
    return new Uint8Array(await new Response(body).arrayBuffer());
  }

  // model.weights.gz holds byte k of every float32 in plane k (difflab.export.web.shuffle_bytes).
  function unshuffle(planes) {
    const n = planes.length / 4, out = new Uint8Array(planes.length);
    for (let k = 0; k < 4; k++) {
      for (let i = 0; i < n; i++) out[4 * i + k] = planes[k * n + i];
    }
    return out;
  }

  async function load() {
    if (location.protocol === "file:") {
      throw new Error("open this page through a web server (python -m http.server -d FOLDER), not as a file");
    }
    if (typeof DecompressionStream === "undefined") {
      throw new Error("this browser has no DecompressionStream (Chrome 80+, Firefox 113+, Safari 16.4+)");
    }
    const page = await (await fetchOk("page.json")).json();
    const meta = await (await fetchOk(page.metadata)).json();
    // One thread: more need SharedArrayBuffer, which needs cross-origin isolation headers
    // (COOP/COEP) that a plain static host does not send.
    ort.env.wasm.numThreads = 1;
    ort.env.wasm.proxy = false;
    const [wasm, graph, planes] = await Promise.all([
      gunzip(page.onnxruntime_web.wasm),
      gunzip(page.model.file),
      gunzip(page.weights.file),
    ]);
    ort.env.wasm.wasmBinary = wasm;
    const session = await ort.InferenceSession.create(graph, {
      executionProviders: ["wasm"],
      externalData: [{ path: page.weights.location, data: unshuffle(planes) }],
    });
    return { page, meta, session };
  }

  // The network as sampler.js calls it: run(x, t, labels, tokens) -> the raw prediction.
  function runner(meta, session) {
    const [C, H, W] = meta.input_shape;
    const floatT = meta.network.inputs.t.dtype === "float32"; // a flow network's t
    return async (x, t, labels, tokens) => {
      const n = x.length / (C * H * W);
      const feeds = {
        x: new ort.Tensor("float32", x, [n, C, H, W]),
        t: floatT
          ? new ort.Tensor("float32", new Float32Array(n).fill(t), [n])
          : new ort.Tensor("int64", new BigInt64Array(n).fill(BigInt(t)), [n]),
      };
      if (labels) feeds.label = new ort.Tensor("int64", BigInt64Array.from(labels, BigInt), [n]);
      if (tokens) {
        const ids = BigInt64Array.from(tokens.flat(), BigInt); // n rows of L token ids
        feeds.tokens = new ort.Tensor("int64", ids, [n, meta.text.length]);
      }
      const out = await session.run(feeds);
      return out.prediction.data;
    };
  }

  function drawGrid(canvas, x, meta, n) {
    const [C, H, W] = meta.input_shape;
    const grid = S.gridPixels(x, n, C, H, W, 4);
    canvas.width = grid.width;
    canvas.height = grid.height;
    canvas.getContext("2d").putImageData(new ImageData(grid.rgba, grid.width, grid.height), 0, 0);
  }

  function setUp(state) {
    const { page, meta } = state;
    $("title").textContent = `difflab: ${page.title}`;
    const classes = meta.classes, text = meta.text;
    if (text) {
      const prompt = $("prompt");
      prompt.value = page.prompt.default;
      prompt.placeholder = "the empty prompt: unconditional";
      prompt.title = `up to ${text.length} words of: ${text.vocabulary.slice(1).join(" ")}`;
      $("guidance").value = String(page.prompt.guidance);
      $("prompt-row").hidden = false;
      $("guidance-row").hidden = Boolean(page.steps.choices);
    }
    if (classes) {
      const select = $("class");
      select.add(new Option("every class in turn", ""));
      for (let k = 0; k < classes.num_classes; k++) {
        const name = classes.names && classes.names[k] ? classes.names[k] : String(k);
        select.add(new Option(name, String(k)));
      }
      $("class-row").hidden = false;
      $("guidance-row").hidden = Boolean(page.steps.choices); // a student's is baked in
    }
    const slot = $("steps-slot");
    let input;
    if (page.steps.choices) {
      input = document.createElement("select");
      for (const s of page.steps.choices) input.add(new Option(String(s), String(s)));
    } else {
      input = document.createElement("input");
      Object.assign(input, { type: "number", min: 1, max: page.steps.max, step: 1 });
    }
    input.id = "steps";
    input.value = String(page.steps.default);
    slot.replaceChildren(input);
    const sampler = meta.sampling.sampler === "consistency" ? "consistency steps" : "DDIM steps";
    $("steps-label").textContent = page.steps.choices ? `steps (the student's)` : sampler;
    $("about").textContent =
      `${meta.kind} model, ${meta.image_shape.slice(1).join("x")} px` +
      (classes ? `, ${classes.num_classes} classes` : "") +
      (text ? `, prompts of up to ${text.length} words` : "") +
      `; ${sampler}; onnxruntime-web ${page.onnxruntime_web.version} (WebAssembly, 1 thread).`;
  }

  // The form's values, checked; a bad one is an Error naming it.
  function settings(state) {
    const seed = Number($("seed").value);
    if (!Number.isInteger(seed) || seed < 0 || seed > MAX_SEED || $("seed").value.trim() === "") {
      throw new Error(`seed must be an integer in 0..${MAX_SEED}, got ${$("seed").value}`);
    }
    const steps = Number($("steps").value);
    S.pagePlan(state.meta, steps); // throws on steps the model does not take
    const label = $("class").value === "" ? null : Number($("class").value);
    const prompt = state.meta.text ? $("prompt").value : null;
    if (prompt !== null) S.tokenize(state.meta.text, prompt); // throws on a word it does not know
    const guidance = $("guidance-row").hidden ? 1 : Number($("guidance").value);
    if (!Number.isFinite(guidance) || guidance < 0 || $("guidance").value.trim() === "") {
      throw new Error(`guidance must be a number >= 0, got ${$("guidance").value}`);
    }
    return { seed, steps, label, prompt, guidance, numImages: state.page.num_images };
  }

  async function draw(state, opts) {
    const { meta } = state;
    const n = opts.numImages;
    const frames = $("frames");
    frames.replaceChildren();
    const plan = S.pagePlan(meta, opts.steps);
    const every = Math.ceil(plan.timesteps.length / MAX_FRAMES);
    let inSteps = 0; // time spent drawing frames and yielding, not computing
    const onStep = async ({ i, t, x }) => {
      const start = performance.now();
      $("status").textContent = `step ${i + 1}/${plan.timesteps.length} (t = ${t})`;
      drawGrid($("grid"), x, meta, n);
      if (i % every === 0) {
        const thumb = document.createElement("canvas");
        thumb.title = `x_t at t = ${t}`;
        drawGrid(thumb, x, meta, n);
        frames.append(thumb);
      }
      await new Promise((resolve) => setTimeout(resolve, 0)); // let the page repaint
      inSteps += performance.now() - start;
    };
    const start = performance.now();
    const images = await S.sample(meta, state.run, opts, onStep);
    const wallMs = performance.now() - start;
    const computeMs = wallMs - inSteps;
    drawGrid($("grid"), images, meta, n);
    const evals = plan.timesteps.length;
    const time = $("time");
    time.dataset.computeMs = computeMs.toFixed(1);
    time.dataset.wallMs = wallMs.toFixed(1);
    time.textContent =
      `${n} images in ${computeMs.toFixed(0)} ms of computation ` +
      `(${evals} network evaluation${evals > 1 ? "s" : ""}; ${wallMs.toFixed(0)} ms with the frames)`;
    state.last = { ...opts, images, computeMs, wallMs, timesteps: plan.timesteps };
    window.difflab.last = state.last;
    return state.last;
  }

  const state = {};
  window.difflab = { ready: null, last: null };
  window.difflab.ready = (async () => {
    try {
      const loadStart = performance.now();
      Object.assign(state, await load());
      state.run = runner(state.meta, state.session);
      setUp(state);
      state.loadMs = performance.now() - loadStart;
      $("status").textContent = `ready (loaded in ${state.loadMs.toFixed(0)} ms)`;
      $("draw").disabled = false;
    } catch (err) {
      $("status").textContent = `error: ${err.message}`;
      throw err;
    }
  })();

  $("controls").addEventListener("submit", async (event) => {
    event.preventDefault();
    if (state.busy) return;
    let opts;
    try {
      opts = settings(state);
    } catch (err) {
      $("status").textContent = `error: ${err.message}`;
      return;
    }
    state.busy = true;
    $("draw").disabled = true;
    try {
      await draw(state, opts);
      $("status").textContent = `done: seed ${opts.seed}, ${opts.steps} step${opts.steps > 1 ? "s" : ""}`;
    } catch (err) {
      $("status").textContent = `error: ${err.message}`;
    } finally {
      state.busy = false;
      $("draw").disabled = false;
    }
  });
  $("new-seed").addEventListener("click", () => {
    $("seed").value = String(Math.floor(Math.random() * 1e6));
  });
})();

// difflab's static page: the seeded noise and the sampler loop, step for step the same as its
// Python twin (difflab.export.web: page_noise, page_plan, sample_page) and a text model's
// tokenizer (difflab.models.text.tokenize). No DOM and no onnxruntime here: the network comes in
// as `run(x, t, labels, tokens)`, so node can run this file too.
//
// Arithmetic: every element is computed in float64 (JavaScript numbers) and stored as float32
// (Float32Array), in the same order of operations as the Python twin, which does the same with
// NumPy float64 arrays. The two differ only where the network does (onnxruntime-web's WebAssembly
// kernels against onnxruntime's) and in Math.log / Math.cos's last float64 bit.
"use strict";
(function (root) {
  // Noise --------------------------------------------------------------------------------------
  // A counter-based generator: element j of stream `stream` for seed `seed` is a normal draw made
  // by Box-Muller from the uniforms of counters 2j and 2j + 1, each a 32-bit hash (Wellons'
  // "lowbias32" integer mixer) of the counter and a key made of the seed and the stream. Any
  // element can be drawn on its own, so image i of a batch has the same noise in any batch size.
  // Stream 0 is x_T; stream i >= 1 is the fresh noise of a consistency student's step i.
  function mix32(x) {
    x = (x ^ (x >>> 16)) >>> 0;
    x = Math.imul(x, 0x7feb352d) >>> 0;
    x = (x ^ (x >>> 15)) >>> 0;
    x = Math.imul(x, 0x846ca68b) >>> 0;
    return (x ^ (x >>> 16)) >>> 0;
  }

  function pageNoise(seed, stream, size) {
    const key = mix32((mix32(stream >>> 0) ^ (seed >>> 0)) >>> 0);
    const out = new Float32Array(size);
    for (let j = 0; j < size; j++) {
      const u1 = (mix32((mix32((2 * j) >>> 0) ^ key) >>> 0) + 0.5) / 4294967296;
      const u2 = (mix32((mix32((2 * j + 1) >>> 0) ^ key) >>> 0) + 0.5) / 4294967296;
      out[j] = Math.sqrt(-2 * Math.log(u1)) * Math.cos(2 * Math.PI * u2);
    }
    return out;
  }

  // The timestep grid ----------------------------------------------------------------------------
  // difflab's "trailing" grid (samplers.timestep_sequence): round(arange(T, 0, -T/steps)) - 1,
  // computed as NumPy's arange computes it, rounding half to even as np.round does.
  function roundHalfEven(v) {
    const r = Math.round(v);
    return Math.abs(v % 1) === 0.5 && r % 2 !== 0 ? r - 1 : r;
  }

  function trailingTimesteps(T, steps) {
    const step = -T / steps;
    const n = Math.ceil((0 - T) / step);
    const delta = T + step - T;
    const grid = [];
    for (let i = 0; i < n; i++) grid.push(roundHalfEven(i === 0 ? T : T + i * delta) - 1);
    return grid;
  }

  // What a draw of `steps` does: the sampler, its timesteps (noisiest first) and whether x0 is
  // clipped; a distilled student's steps are its own (the JSON's step_choices).
  function pagePlan(meta, steps) {
    const s = meta.sampling;
    if (s.step_choices) {
      const grid = s.step_choices[String(steps)];
      if (!grid) throw new Error(`steps must be one of ${Object.keys(s.step_choices).join(", ")}`);
      return { sampler: s.sampler, timesteps: grid, clip: s.sampler === "ddim" && s.clip_x0 };
    }
    const T = meta.schedule.T;
    if (!(Number.isInteger(steps) && steps >= 1 && steps <= T)) {
      throw new Error(`steps must be an integer in 1..${T}, got ${steps}`);
    }
    return { sampler: "ddim", timesteps: trailingTimesteps(T, steps), clip: s.clip_x0 };
  }

  // Prompts ------------------------------------------------------------------------------------
  // A text model's tokenizer, as difflab.models.text.tokenize: the prompt split on whitespace as
  // Python's str.split() splits (PY_SPACE: its whitespace, which is not JavaScript's \s), word j
  // is token j, its index in the vocabulary (entry 0, the pad token, is no word; no lowercasing),
  // the rest of the `length` tokens 0 (pad). A word outside the vocabulary, or more than `length`
  // words, throws an Error with the Python one's message.
  const PY_SPACE = /[\t\n\v\f\r\x1c-\x1f \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]+/;

  function tokenize(text, prompt) {
    const ids = new Map();
    text.vocabulary.forEach((word, i) => {
      if (i > 0) ids.set(word, i);
    });
    const words = prompt.split(PY_SPACE).filter((word) => word !== "");
    if (words.length > text.length) {
      throw new Error(`prompt '${prompt}' has ${words.length} words; at most ${text.length} fit`);
    }
    const row = new Array(text.length).fill(0);
    words.forEach((word, j) => {
      if (!ids.has(word)) {
        const known = text.vocabulary.slice(1).join(" ");
        throw new Error(`unknown word '${word}' in prompt '${prompt}'; this model knows: ${known}`);
      }
      row[j] = ids.get(word);
    });
    return row;
  }

  // The sampler loop -------------------------------------------------------------------------------
  // opts: seed, steps, label (null: the classes in turn, image i has class i mod K), prompt (a
  // text model's, for every image), guidance (a plain conditional or text model's classifier-free
  // scale w: u + w (c - u), u at the null label or the empty prompt), numImages.
  // run(x, t, labels, tokens) -> Float32Array: the network on a batch (t a number for every
  // image; labels an array of n classes or null; tokens n rows of L token ids or null).
  // onStep({i, t, x, x0}) is called with each step's input x and its predicted x0.
  async function sample(meta, run, opts, onStep) {
    const plan = pagePlan(meta, opts.steps);
    const [C, H, W] = meta.input_shape;
    const n = opts.numImages, size = n * C * H * W;
    const ab = meta.schedule.alpha_bar;
    const flow = meta.prediction === "flow";
    const classes = meta.classes, text = meta.text || null;
    if (opts.prompt != null && !text) {
      throw new Error("a prompt was given, but this page's model has no text conditioning");
    }
    if (opts.label != null && !classes) {
      throw new Error("a class label was given, but this page's model has no classes");
    }
    // The conditioning of n images, and of 2n for guidance: conditional, then unconditional.
    let labels = null, labels2 = null, tokens = null, tokens2 = null;
    if (classes) {
      labels = new Array(n).fill(0).map((_, i) => (opts.label == null ? i % classes.num_classes : opts.label));
      labels2 = labels.concat(new Array(n).fill(classes.null_label));
    }
    if (text) {
      if (typeof opts.prompt !== "string") {
        throw new Error('a text model draws from a prompt (the empty one is "")');
      }
      tokens = new Array(n).fill(tokenize(text, opts.prompt));
      tokens2 = tokens.concat(new Array(n).fill(new Array(text.length).fill(0))); // the empty prompt
    }
    const w = (classes || text) && !meta.sampling.step_choices ? opts.guidance : 1;

    // The network's output at (x, t): one pass, or u + w (c - u) from a batch of 2n.
    async function predict(x, t) {
      if (w === 1) return run(x, t, labels, tokens);
      const both = new Float32Array(2 * size);
      both.set(x);
      both.set(x, size);
      const out = await run(both, t, labels2, tokens2);
      const guided = new Float64Array(size);
      for (let j = 0; j < size; j++) guided[j] = out[size + j] + w * (out[j] - out[size + j]);
      return guided;
    }

    let x = pageNoise(opts.seed, 0, size);
    const ts = plan.timesteps;
    for (let i = 0; i < ts.length; i++) {
      const t = ts[i];
      const x0 = new Float32Array(size);
      if (plan.sampler === "consistency") {
        // Song et al. 2023, Alg. 1: re-noise to t with fresh noise (stream i), then one jump
        // x0 = c_skip[t] x + c_out[t] F(x, t).
        if (i > 0) {
          const z = pageNoise(opts.seed, i, size);
          const r = ab[t] / ab[0];
          const a = Math.sqrt(r), s = Math.sqrt(1 - r);
          const noisy = new Float32Array(size);
          for (let j = 0; j < size; j++) noisy[j] = a * x[j] + s * z[j];
          x = noisy;
        }
        const out = await predict(x, t);
        const cs = meta.sampling.c_skip[t], co = meta.sampling.c_out[t];
        for (let j = 0; j < size; j++) x0[j] = cs * x[j] + co * out[j];
        if (onStep) await onStep({ i, t, x, x0 });
        x = x0;
        continue;
      }
      // DDIM (Song et al. 2021, Eq. 12, eta 0) from t to the next timestep (the data after the
      // last): x = sqrt(ab') x0 + sqrt(1 - ab') eps.
      const a = Math.sqrt(ab[t]), s = Math.sqrt(1 - ab[t]);
      const abNext = i + 1 < ts.length ? ab[ts[i + 1]] : 1.0;
      const aNext = Math.sqrt(abNext), sNext = Math.sqrt(1 - abNext);
      const eps = new Float64Array(size), x0f = new Float64Array(size);
      if (flow) {
        // A flow network sees the point of its straight path with x_t's SNR (difflab.flow).
        const k = 1 / (a + s), tf = Math.fround(s / (a + s));
        const xf = new Float32Array(size);
        for (let j = 0; j < size; j++) xf[j] = k * x[j];
        const v = await predict(xf, Math.fround(tf * 1000));
        for (let j = 0; j < size; j++) {
          eps[j] = xf[j] + (1 - tf) * v[j];
          x0f[j] = xf[j] - tf * v[j];
        }
      } else {
        const out = await predict(x, t);
        for (let j = 0; j < size; j++) {
          if (meta.prediction === "eps") {
            eps[j] = out[j];
            x0f[j] = (x[j] - s * out[j]) / a;
          } else if (meta.prediction === "x0") {
            x0f[j] = out[j];
            eps[j] = (x[j] - a * out[j]) / s;
          } else {
            x0f[j] = a * x[j] - s * out[j];
            eps[j] = s * x[j] + a * out[j];
          }
        }
      }
      if (plan.clip) {
        for (let j = 0; j < size; j++) {
          x0f[j] = Math.min(1, Math.max(-1, x0f[j]));
          eps[j] = (x[j] - a * x0f[j]) / s;
        }
      }
      x0.set(x0f);
      if (onStep) await onStep({ i, t, x, x0 });
      const next = new Float32Array(size);
      for (let j = 0; j < size; j++) next[j] = aNext * x0f[j] + sNext * eps[j];
      x = next;
    }
    return x;
  }

  // Pixels as difflab.viz.make_grid makes them (nrow images a row, 1 px of black between):
  // round((x + 1) * 127.5) in float32, half to even, clipped to 0..255; grey repeated to RGB.
  function gridPixels(x, n, C, H, W, nrow) {
    const cols = Math.min(nrow, n), rows = Math.ceil(n / cols);
    const gw = cols * (W + 1) + 1, gh = rows * (H + 1) + 1;
    const rgba = new Uint8ClampedArray(gw * gh * 4);
    for (let p = 3; p < rgba.length; p += 4) rgba[p] = 255;
    for (let i = 0; i < n; i++) {
      const top = 1 + Math.floor(i / cols) * (H + 1), left = 1 + (i % cols) * (W + 1);
      for (let h = 0; h < H; h++) {
        for (let wx = 0; wx < W; wx++) {
          const p = ((top + h) * gw + left + wx) * 4;
          for (let c = 0; c < 3; c++) {
            let v = x[((i * C + (C === 1 ? 0 : c)) * H + h) * W + wx];
            if (Number.isNaN(v)) v = 0;
            const scaled = Math.fround(Math.fround(v + 1) * 127.5);
            rgba[p + c] = Math.min(255, Math.max(0, roundHalfEven(scaled)));
          }
        }
      }
    }
    return { rgba, width: gw, height: gh };
  }

  const api = { mix32, pageNoise, roundHalfEven, trailingTimesteps, pagePlan, tokenize, sample, gridPixels };
  if (typeof module !== "undefined" && module.exports) module.exports = api;
  else root.DifflabSampler = api;
})(typeof self !== "undefined" ? self : this);

# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # The learning path, as a notebook
#
# The same path as [docs/guide.md](../docs/guide.md), with difflab's Python API instead of the
# command line: the forward process, the U-Net's insides, training, sampling and watching the
# intermediates, samplers, guidance, editing and one-step distillation. Make the `.ipynb` with
# `jupytext --to ipynb notebooks/learning_path.py`; the slow tests execute it top to bottom with
# small settings (`DIFFLAB_NOTEBOOK_SMALL=1`), so it cannot rot.
#
# Settings: MNIST where `DATA` says (the four IDX `.gz` files), ten minutes of training. With
# `DIFFLAB_NOTEBOOK_SMALL=1` every budget is a few steps.

# %%
import os
from pathlib import Path

import numpy as np
import torch
from IPython.display import Image, display

from difflab import editing, insides, viz
from difflab.config import ConsistencyConfig, DiffusionConfig, TrainConfig
from difflab.consistency import consistency_timesteps
from difflab.data import load_dataset
from difflab.io import file_sha256
from difflab.kinds import load_model, plan_sampling, train
from difflab.objectives.consistency import load_teacher, student_config
from difflab.objectives.diffusion import prepare_run
from difflab.sampling import SamplingRequest, TrajectoryRecorder, execute, generate, model_denoiser
from difflab.schedules import SCHEDULES, make_schedule

SMALL = os.environ.get("DIFFLAB_NOTEBOOK_SMALL") == "1"
DATA = os.environ.get("DATA", "../shared/data/mnist")
OUT = Path(os.environ.get("DIFFLAB_NOTEBOOK_OUT", "runs/notebook"))
MINUTES = None if SMALL else 10.0  # the training budget (wall time of training steps)
STEPS = 3 if SMALL else None  # or a step limit
torch.manual_seed(0)


def show(path: Path) -> None:
    display(Image(filename=str(path)))


# %% [markdown]
# ## 1. The forward process
#
# x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps (Ho et al. 2020, Eq. 4;
# `difflab.diffusion.q_sample`). Code timesteps t = 0 .. T-1 are the paper's 1 .. T.

# %%
test_set = load_dataset("mnist", data_dir=DATA, split="test", download=False)
schedule = make_schedule("cosine", 1000)
show(
    viz.save_forward_process_grid(
        test_set.images[:6],
        schedule,
        OUT / "forward_process.png",
        generator=np.random.default_rng(0),
    )
)
show(viz.plot_alpha_bar([make_schedule(name, 1000) for name in SCHEDULES], OUT / "schedules.png"))

# %% [markdown]
# ## 2-3. Train the U-Net
#
# `prepare_run` fits the default U-Net for the data (16/32/64 channels at 28/14/7 px) into a
# configuration; `train` runs the diffusion objective on the shared harness: v prediction,
# min-SNR-5, the cosine schedule, EMA, previews, checkpoints and `report.html`.

# %%
train_cfg = TrainConfig(
    data="mnist", data_dir=DATA, max_minutes=MINUTES, max_steps=STEPS, sample_every=0
)
config, dataset = prepare_run(train_cfg, DiffusionConfig())
result = train(config, dataset, OUT / "mnist", overwrite=True, progress=False)
print(
    f"{result.steps} steps in {result.minutes:.1f} min, loss {result.first_loss:.4f} -> "
    f"{result.last_loss:.4f}"
)
show(OUT / "mnist" / "training_loss.png")

# %% [markdown]
# ## 4. Inside the network
#
# One test digit noised to five timesteps, each U-Net level's feature energy (forward hooks on
# the real pass), and where two pixels look in the bottleneck's self-attention.

# %%
loaded = load_model(OUT / "mnist" / "model_final.safetensors", "cpu")
model = loaded.model
timesteps = [20, 250, 500, 750, 979]
x_t = insides.noised(
    torch.from_numpy(test_set.images[3]),
    timesteps,
    loaded.schedule,
    torch.Generator().manual_seed(0),
)
show(
    viz.plot_feature_maps(
        x_t, timesteps, insides.feature_maps(model, x_t, timesteps), OUT / "feature_maps.png"
    )
)
weights = insides.bottleneck_attention(model, x_t, timesteps)
queries = [(14, 14), (7, 7)]
rows = [insides.query_index(r, c, 28, 7) for r, c in queries]
show(viz.plot_attention(x_t, timesteps, weights, queries, rows, OUT / "attention.png"))
t, sinusoid, learned = insides.time_embedding_similarity(model, 1000)
show(
    viz.plot_similarity(
        t, [("sinusoid", sinusoid), ("learned", learned)], OUT / "time_embeddings.png"
    )
)

# %% [markdown]
# ## 5. Sample, and watch
#
# 20 steps of DPM-Solver++(2M) SDE; the callback sees x_t and the predicted x_0 at every step
# (samplers never draw pictures themselves).

# %%
recorder = TrajectoryRecorder(lambda i, t: i % 4 == 0 or i == 19, num_images=8)
x = generate(
    model,
    loaded.config,
    loaded.schedule,
    num_images=64,
    seed=1,
    sampler="dpmpp-2m-sde",
    steps=20,
    callback=recorder,
)
show(viz.save_grid(x, OUT / "samples.png"))
show(viz.save_trajectory_grid([*recorder.frames, (-1, x)], OUT / "trajectory.png"))

# %% [markdown]
# ## 6. Samplers and steps
#
# The same noise, four samplers. DDPM needs its 1000 steps; DDIM jumps; UniPC is a high-order
# solver for 4-10 steps.

# %%
plans = [("ddpm", 10 if SMALL else 1000), ("ddim", 10), ("unipc", 6), ("dpmpp-2m-sde", 20)]
for sampler, steps in plans:
    images = generate(
        model, loaded.config, loaded.schedule, num_images=16, seed=2, sampler=sampler, steps=steps
    )
    show(viz.save_grid(images, OUT / f"{sampler}_{steps}.png"))

# %% [markdown]
# ## 8. Editing: interpolation between two digits
#
# Invert two test digits to noise with deterministic DDIM, walk between them on the sphere
# (slerp), and denoise each point (`difflab.editing`).

# %%
pair = torch.from_numpy(test_set.images[:2])
denoiser = model_denoiser(model, loaded.config, loaded.schedule)
with torch.no_grad():
    noise = editing.ddim_invert(denoiser, pair, loaded.schedule, steps=20)
    frames = editing.interpolate(
        denoiser, noise[:1], noise[1:], loaded.schedule, frames=8, steps=20
    )
show(viz.save_grid(frames, OUT / "interpolate.png", nrow=8))

# %% [markdown]
# ## 9. One step: consistency distillation
#
# The student starts as the teacher and learns to map every point of the teacher's ODE
# trajectory to the same image (Song et al. 2023, Alg. 2); then it draws 64 digits in one
# network evaluation.

# %%
teacher_path = OUT / "mnist" / "model_final.safetensors"
teacher = load_teacher(teacher_path)
cd = ConsistencyConfig(teacher=str(teacher_path), teacher_sha256=file_sha256(teacher_path))
cd_train = TrainConfig(
    data="mnist",
    data_dir=DATA,
    max_minutes=MINUTES,
    max_steps=STEPS,
    lr=1e-3,
    sample_every=0,
    preview_steps=2,
)
student_cfg = student_config(teacher, cd_train, cd)
train(student_cfg, dataset, OUT / "cd", overwrite=True, progress=False, teacher=teacher)
student = load_model(OUT / "cd" / "model_final.safetensors", "cpu")
# The kind table plans it: a consistency student draws with its own sampler, here in 1 step.
one_step = execute(student, plan_sampling(student, SamplingRequest(num_images=64, seed=3, steps=1)))
show(viz.save_grid(one_step, OUT / "one_step.png"))
print("the student's 2-step times:", consistency_timesteps(1000, 2))

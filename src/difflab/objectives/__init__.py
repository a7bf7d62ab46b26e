"""Objectives: one module per trainer, each an ``Objective`` (``difflab.training.objective``) that
declares its networks, optimisers and random streams and computes the loss of one batch; the
harness (``difflab.training``) runs any of them. Each is registered in the kind table
(``difflab.kinds``), which is the only code that chooses among them.

  diffusion.py         DDPM's noise prediction (``difflab train``), and the run configuration
  latent.py            the same on an autoencoder's latents (``train --latent``)
  numpy_diffusion.py   the from-scratch NumPy U-Net's own loop (``train --backend numpy``)
  consistency.py       consistency distillation (``difflab distill``)
  progressive.py       progressive distillation with its DMD stage (``distill --method progressive``)
  gan.py               the GAN baseline (``difflab train-gan``)
  autoencoder.py       the KL autoencoder of latent diffusion (``difflab train-autoencoder``)
"""

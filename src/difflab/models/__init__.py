"""The PyTorch networks: ``unet`` (the diffusion U-Net every diffusion kind uses), ``gan`` (the
DCGAN generator and the discriminators), ``autoencoder`` (latent diffusion's KL autoencoder),
``classifier`` (the small CNN whose features ``difflab evaluate`` compares) and ``inception``
(pytorch-fid's FID-Inception). Built from a config; no training and no sampling here."""

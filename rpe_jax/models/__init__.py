"""Networks: the DiT, the SD-VAE and the FID Inception network."""

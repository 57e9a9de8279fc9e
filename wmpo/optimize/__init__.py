"""The action optimizer: trajectory-latent optimization through the frozen plan generator."""

"""Models: policy (this file set grows: autoencoder, video DiT, success classifier, ...)."""

"""Episode data: on-disk format, collection in the real simulator, loading for training."""

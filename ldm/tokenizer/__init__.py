"""The KL-VAE tokenizer: model, losses and training loop (pure torch; no tracking back-end)."""

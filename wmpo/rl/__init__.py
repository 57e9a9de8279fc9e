"""Policy optimization inside the world model (GRPO, WMPO Algorithm 1)."""

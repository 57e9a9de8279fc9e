"""Policy optimization inside the world model (GRPO, WMPO Algorithm 1)."""

# How GRPO picks its groups' start tasks (``wmpo.rl.trainer.start_states``); here, free of torch,
# so the CLI can offer them.
TASK_SAMPLINGS = ("round-robin", "informative")

"""Training machinery shared by the entry scripts: distributed setup, loops, checkpoints."""

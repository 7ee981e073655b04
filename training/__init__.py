"""Training: the loop the entry points share, objectives (CE, dissimilarity, adversarial training,
TRADES) and checkpoints. Submodules are imported directly (``training.engine`` ...)."""

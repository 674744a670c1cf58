"""Evaluation metrics: distances between sample sets, mode masses, and (at image scale) reward and diversity scores."""

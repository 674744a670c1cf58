"""∇-GFlowNet reproduction: diffusion alignment with residual ∇-DB and its baselines."""

"""Data: OpenMoji emoji rendered small with their prompt sets (the tiny scale), and the
closed-form 2-D Gaussian-mixture toy (``toy2d``)."""

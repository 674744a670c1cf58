"""Model backends behind one interface (nabla.models.base.DiffusionBackend)."""

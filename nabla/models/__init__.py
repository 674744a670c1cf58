"""Model backends behind one interface (nabla.models.base.DiffusionBackend)."""

import logging


class _NoImageProcessorFallbackNote(logging.Filter):
    """Importing diffusers' StableDiffusionPipeline makes it import transformers' CLIP and SigLIP
    image processors (its feature extractor and IP-adapter loader); transformers 5 without
    torchvision then notes, once a process, that each falls back to its PIL twin. This package
    builds every pipeline with feature_extractor=None and loads no IP adapter, so neither class is
    ever used: the notes only cluttered every dry run and job log. Only those two notes are dropped.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not (message.startswith(("`CLIPImageProcessor`", "`SiglipImageProcessor`"))
                    and "requires torchvision (not installed)" in message)


# installed before any backend module imports diffusers (transformers logs it on this logger)
logging.getLogger("transformers.utils.import_utils").addFilter(_NoImageProcessorFallbackNote())

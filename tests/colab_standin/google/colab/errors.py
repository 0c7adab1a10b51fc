"""google.colab.errors: the base class of Colab's errors (huggingface_hub imports it)."""


class Error(Exception):
    """Base class of google.colab errors."""

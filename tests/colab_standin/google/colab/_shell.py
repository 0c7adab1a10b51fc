"""Colab runs IPython with a shell class of its own, which is how huggingface_hub recognises Colab."""

from ipykernel.zmqshell import ZMQInteractiveShell


class Shell(ZMQInteractiveShell):
    """Colab's shell, as far as anyone can tell from its class name."""

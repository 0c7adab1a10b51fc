"""A stand-in for Google Colab's `google.colab` package, for tests/test_colab.py: just what the series touches.

Colab's kernel imports google.colab and runs a shell class of its own (huggingface_hub recognises Colab by
that class); `drive.mount` links the mount point to a folder named by STANDIN_DRIVE, the test's Google
Drive; `userdata.get` reads Colab's secrets from STANDIN_SECRET_<NAME> variables.
"""

from . import drive, errors, userdata  # noqa: F401

"""google.colab.userdata: Colab's secrets, here from STANDIN_SECRET_<NAME> environment variables."""

import os

from .errors import Error


class SecretNotFoundError(Error):
    """No secret of that name."""


class NotebookAccessError(Error):
    """The user refused this notebook access to the secret."""


def get(key: str) -> str:
    """The secret `key`, as Colab's secrets panel holds it."""
    value = os.environ.get(f"STANDIN_SECRET_{key}")
    if value is None:
        raise SecretNotFoundError(key)
    return value

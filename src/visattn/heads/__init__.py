"""Task heads. Importing this package registers every model with :mod:`visattn.models`."""

from visattn.heads import classifier  # noqa: F401  (registers "classifier")

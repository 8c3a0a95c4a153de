"""Task heads. Importing this package registers every model with :mod:`visattn.models`."""

from visattn.heads import captioner  # noqa: F401  (registers "captioner")
from visattn.heads import classifier  # noqa: F401  (registers "classifier")
from visattn.heads import detector  # noqa: F401  (registers "detector")
from visattn.heads import variants  # noqa: F401  (registers "tiny_classifier", "tiny_captioner", "tiny_detector")

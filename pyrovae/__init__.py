"""pyrovae: variational autoencoders as Pyro programs.

The package is layered; each layer imports only those before it (a test keeps it so):

    errors, checks, settings, files, torchtools, plots   (the base: no pyrovae imports of their own)
    components   priors, likelihoods, guide families, networks: the plug-ins
    data         MNIST and your own data (files, named sets, Python objects), splits, transforms, batch plans
    models       the model protocol and its registry; VAE, autoencoders, CVAE, structured-output CVAE, M2
    inference    objectives (the ELBO with its terms, IWAE, free bits), importance weights, the KL weight
    training     the one trainer, its config, checkpoints and run folders, DDP
    evaluation   the one importance-sampling evaluator, its memory planner, latent statistics, baselines, samplers
    diagnostics  PSIS k-hat, NUTS reference, gaps, posterior collapse, the report
    app          run folders end to end, figures, the comparison report, the command line
"""

from .errors import (ArgumentTypeError, CheckpointError, ConfigError, DataError, PyroVAEError, RunDirError,
                     UnsupportedError)
from .models import (CVAE, M2, VAE, CVAEConfig, Family, HierarchicalConfig, HierarchicalVAE, LossRecord, M2Config,
                     ModelConfig, Stage, StructuredConfig, StructuredCVAE, VAEConfig, register_family)
from .components.plugins import register_guide, register_likelihood, register_prior
from .training import RunConfig, TrainerConfig, fit, load_run
from .data import DataConfig
from .evaluation import evaluate, log_likelihood

__version__ = "0.2.0"
__all__ = ["ArgumentTypeError", "CVAE", "CVAEConfig", "CheckpointError", "ConfigError", "DataConfig", "DataError",
           "Family", "HierarchicalConfig", "HierarchicalVAE", "LossRecord", "M2", "M2Config", "ModelConfig",
           "PyroVAEError", "RunConfig", "RunDirError", "Stage",
           "StructuredCVAE", "StructuredConfig", "TrainerConfig", "UnsupportedError", "VAE", "VAEConfig",
           "__version__", "evaluate", "fit", "load_run", "log_likelihood", "register_family", "register_guide",
           "register_likelihood", "register_prior"]

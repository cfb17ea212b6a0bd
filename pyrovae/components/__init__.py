"""Plug-in components: priors p(z), likelihoods p(x|z), guide families q(z|x) and networks.

Each is a small ``torch.nn.Module`` that the models take as an argument, so a user's own prior or
likelihood drops in beside ours (see the contracts in :mod:`.priors`, :mod:`.likelihoods` and
:mod:`.guides`). Nothing here imports anything above it in pyrovae.
"""

from .guides import GUIDES, IAF, DiagonalNormal, LowRankNormal
from .likelihoods import LIKELIHOODS, Bernoulli, set_output_bias
from .nets import NETWORKS, MLPDecoder, MLPEncoder, build_conditional_networks, build_networks, mlp, one_hot
from .priors import PRIORS, FlowPrior, LearnedNormal, MixtureOfGaussians, StandardNormal, VampPrior, check_prior

__all__ = ["Bernoulli", "GUIDES", "IAF", "LIKELIHOODS", "NETWORKS", "PRIORS", "DiagonalNormal", "FlowPrior",
           "LearnedNormal", "LowRankNormal", "MLPDecoder", "MLPEncoder", "MixtureOfGaussians", "StandardNormal",
           "VampPrior", "build_conditional_networks", "build_networks", "check_prior", "mlp", "one_hot",
           "set_output_bias"]

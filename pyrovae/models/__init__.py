"""Model families and the protocol they share (:mod:`.base`): the VAE, the label-conditional CVAE, the
structured-output CVAE, the semi-supervised M2 and the hierarchical VAE, each registered under its ``kind``."""

from .base import (FAMILIES, Family, LossRecord, ModelConfig, Stage, check_labels, config_from_dict, data_plate,
                   family_for, register_family)
from .autoencoder import Autoencoder, AutoencoderConfig
from .cvae import CVAE, CVAEConfig
from .hierarchical import HierarchicalConfig, HierarchicalVAE, precision_weighted_merge
from .m2 import M2, M2Config, M2Objective
from .structured import StructuredConfig, StructuredCVAE
from .vae import VAE, PlugInConfig, VAEConfig, check_data

__all__ = ["Autoencoder", "AutoencoderConfig", "CVAE", "CVAEConfig", "FAMILIES", "Family", "HierarchicalConfig",
           "HierarchicalVAE", "LossRecord", "M2", "M2Config", "M2Objective", "ModelConfig", "PlugInConfig", "Stage",
           "StructuredCVAE", "StructuredConfig", "VAE", "VAEConfig", "check_data", "check_labels", "config_from_dict",
           "data_plate", "family_for", "precision_weighted_merge", "register_family"]

"""Data: MNIST from its IDX files, binarization and dequantization, the run's data settings, and the
batch plans the trainer draws epochs through."""

from .batches import Batch, BatchPlan, PairedStream, SingleStream
from .config import DataConfig, load_data
from .mnist import (BINARIZATIONS, MNIST_FILES, RANDOM_TRANSFORMS, TEST_BINARIZATION_SEED, ImageDataset, binarize,
                    dequantize, download_mnist, load_mnist, load_mnist_arrays, read_idx, resolve_data_root)

__all__ = ["BINARIZATIONS", "Batch", "BatchPlan", "DataConfig", "ImageDataset", "MNIST_FILES", "PairedStream",
           "RANDOM_TRANSFORMS", "SingleStream", "TEST_BINARIZATION_SEED", "binarize", "dequantize", "download_mnist",
           "load_data", "load_mnist", "load_mnist_arrays", "read_idx", "resolve_data_root"]

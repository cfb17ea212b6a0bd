"""Data: MNIST from its IDX files and the user's own data (files, folders, named sets that ship inside installed
packages, tensors, arrays, Datasets and DataLoaders), seeded splits, transforms fitted on the training split,
and the batch plans the trainer draws epochs through."""

from .batches import Batch, BatchPlan, PairedStream, SingleStream
from .config import DataConfig, DataInfo, load_data, prepare_data
from .dataset import ArrayDataset, ImageDataset, NpyRows
from .mnist import (BINARIZATIONS, MNIST_FILES, RANDOM_TRANSFORMS, TEST_BINARIZATION_SEED, binarize, dequantize,
                    download_mnist, load_mnist, load_mnist_arrays, read_idx, resolve_data_root)
from .sources import NAMED_SETS, SOURCE_OPTIONS, Source, read_source
from .transforms import TRANSFORMS, FittedTransform

__all__ = ["ArrayDataset", "BINARIZATIONS", "Batch", "BatchPlan", "DataConfig", "DataInfo", "FittedTransform",
           "ImageDataset", "MNIST_FILES", "NAMED_SETS", "NpyRows", "PairedStream", "RANDOM_TRANSFORMS",
           "SOURCE_OPTIONS", "SingleStream", "Source", "TEST_BINARIZATION_SEED", "TRANSFORMS", "binarize", "dequantize",
           "download_mnist", "load_data", "load_mnist", "load_mnist_arrays", "prepare_data", "read_idx", "read_source",
           "resolve_data_root"]

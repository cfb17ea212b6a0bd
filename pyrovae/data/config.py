"""The data settings of a run, and the ``(train, validation, test)`` split they describe."""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import Field, PositiveInt

from ..settings import Settings
from .mnist import ImageDataset, load_mnist


class DataConfig(Settings):
    """Which data a run trains and is tested on, and how it is split and transformed.

    The data set is MNIST, read from ``data_dir`` (see :func:`pyrovae.data.resolve_data_root`). The
    validation images are a random subset of the training images drawn with the run's seed; the test
    set is MNIST's own, binarized (or dequantized) once with seed 0 whatever the run's seed, so test
    numbers are comparable across runs.
    """

    data_dir: Optional[str] = Field(None, description="MNIST root (default: $PYROVAE_DATA, else ~/.cache/pyrovae)")
    binarization: Literal["dynamic", "static", "none", "dequantize"] = Field(
        "dynamic", description="dynamic: a fresh Bernoulli draw of every training image at every epoch; static: "
                               "once; none: grey values k/255; dequantize: (k + u)/256, u ~ U(0, 1) afresh")
    validation_size: int = Field(0, ge=0, description="training images held out for validation (0: none)")
    train_size: Optional[PositiveInt] = Field(None, description="train on the first N training images only")
    test_size: Optional[PositiveInt] = Field(None, description="test on the first N test images only")


def load_data(config: DataConfig, seed: int = 0) -> tuple[ImageDataset, ImageDataset | None, ImageDataset]:
    """The ``(train, validation or None, test)`` datasets that ``config`` describes, with ``seed`` for
    the validation split and static binarization (see :func:`pyrovae.data.load_mnist`).

    Raises:
        DataError: the MNIST files are missing, truncated or corrupt.
        ConfigError: a ``validation_size`` or ``train_size`` the data cannot give.
    """
    train, validation, test = load_mnist(config.data_dir, config.binarization, config.validation_size, seed=seed,
                                         train_size=config.train_size)
    if config.test_size is not None:
        test = test.subset(slice(0, config.test_size))
    return train, validation, test

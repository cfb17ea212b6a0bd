"""Batch plans: how one epoch of training batches is drawn from the training data.

A model family says which plan its batches come from (:meth:`pyrovae.models.Family.batch_plan`); the
trainer draws every epoch through it, so a family with another batch structure (M2's paired labelled
and unlabelled batches) configures the one trainer instead of copying it. A batch is a dict of tensors
(``"x"``, and ``"y"`` for labels) whose first dimension is the batch.

Under ``torchrun`` the plans draw this process's shard of each global batch through the ``sharding``
argument, a :class:`pyrovae.training.distributed.DistributedContext` (anything with its ``batches``,
``num_batches`` and ``padded_size``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Protocol

import torch

from .mnist import ImageDataset

#: A mini-batch: named tensors whose first dimension is the batch (``"x"``, ``"y"``, ...).
Batch = dict


class Sharding(Protocol):
    def batches(self, data, batch_size: int, generator: torch.Generator,
                sample_generator: torch.Generator | None = None) -> Iterator[Batch]: ...

    def num_batches(self, n: int, batch_size: int) -> int: ...

    def padded_size(self, n: int) -> int: ...


class BatchPlan(Protocol):
    """How a family's training batches are drawn.

    Attributes:
        num_data: the number of observations the loss of a batch is scaled to (its data plate's
            ``num_data``).
    """

    num_data: int

    def steps(self, sharding: Sharding) -> int:
        """Optimizer steps per epoch (the same on every process)."""

    def observations_per_epoch(self, sharding: Sharding) -> int:
        """The total weight of an epoch's records (the sum of their ``num_observations`` over processes)."""

    def epoch(self, generator: torch.Generator, sample_generator: torch.Generator,
              sharding: Sharding) -> Iterator[Batch]:
        """One epoch of batches; shuffling draws from ``generator`` (the same on every process), random
        transforms from ``sample_generator`` (this process's own; one process uses ``generator``)."""


@dataclass
class SingleStream:
    """One pass over ``data`` in shuffled batches of ``batch_size`` per epoch (the usual plan)."""

    data: ImageDataset
    batch_size: int

    @property
    def num_data(self) -> int:
        return len(self.data)

    def steps(self, sharding: Sharding) -> int:
        return sharding.num_batches(len(self.data), self.batch_size)

    def observations_per_epoch(self, sharding: Sharding) -> int:
        return sharding.padded_size(len(self.data))

    def epoch(self, generator, sample_generator, sharding) -> Iterator[Batch]:
        return sharding.batches(self.data, self.batch_size, generator, sample_generator)


@dataclass
class PairedStream:
    """Semi-supervised batches: one epoch is one pass over the ``unlabelled`` data; every step also takes a
    batch of ``labelled_batch_size`` from the ``labelled`` data, cycling through it (reshuffled at each
    pass, and afresh at each epoch).

    Each batch is ``{"x": unlabelled images, "x_labelled": labelled images, "y_labelled": their labels}``;
    a record's ``num_observations`` counts the unlabelled images.
    """

    unlabelled: ImageDataset
    labelled: ImageDataset
    batch_size: int
    labelled_batch_size: int

    @property
    def num_data(self) -> int:
        return len(self.unlabelled) + len(self.labelled)

    def steps(self, sharding: Sharding) -> int:
        return sharding.num_batches(len(self.unlabelled), self.batch_size)

    def observations_per_epoch(self, sharding: Sharding) -> int:
        return sharding.padded_size(len(self.unlabelled))

    def epoch(self, generator, sample_generator, sharding) -> Iterator[Batch]:
        labelled_size = min(self.labelled_batch_size, len(self.labelled))

        def cycle():
            while True:
                yield from sharding.batches(self.labelled, labelled_size, generator, sample_generator)

        labelled = cycle()
        for batch in sharding.batches(self.unlabelled, self.batch_size, generator, sample_generator):
            pair = next(labelled)
            yield {"x": batch["x"], "x_labelled": pair["x"], "y_labelled": pair["y"]}

"""MNIST as tensors in memory: reading the original IDX files, binarization, batches.

The four IDX files (LeCun, Cortes & Burges) are read with numpy, their magic numbers, shapes and md5
sums checked (the md5 of the decompressed content for ``.gz`` files, so a ``.gz`` holding other data of the
same shape is refused too). The data root is resolved as ``data_dir`` argument > ``$PYROVAE_DATA`` > a per-user cache
folder, and the files are looked up in ``<root>/MNIST/raw/`` (torchvision's layout) or ``<root>/``.
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import os
import shutil
import tempfile
import urllib.error
import urllib.request
import zlib
from pathlib import Path

import numpy as np
import torch

from ..errors import ConfigError, DataError
from .dataset import BINARIZATIONS, RANDOM_TRANSFORMS, ArrayDataset, ImageDataset, binarize, dequantize  # noqa: F401

log = logging.getLogger(__name__)


#: file name -> (md5 of the uncompressed file, md5 of the .gz file, IDX magic, shape)
MNIST_FILES = {
    "train-images-idx3-ubyte": ("6bbc9ace898e44ae57da46a324031adb", "f68b3c2dcbeaaa9fbdd348bbdeb94873", 2051, (60000, 28, 28)),
    "train-labels-idx1-ubyte": ("a25bea736e30d166cdddb491f175f624", "d53e105ee54ea40749a09fcbcd1e9432", 2049, (60000,)),
    "t10k-images-idx3-ubyte": ("2646ac647ad5339dbf082846283269ea", "9fb629c4189551a2d022fa330f9573f3", 2051, (10000, 28, 28)),
    "t10k-labels-idx1-ubyte": ("27ae3e4e09519cfbb04c329615203637", "ec29112dd5afa0611ce80d1b7f02629c", 2049, (10000,)),
}
MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
)
#: The seed of the one fixed binarization of the test set (and of ``static`` training data).
TEST_BINARIZATION_SEED = 0


def default_data_root() -> Path:
    """The per-user cache folder used when neither ``data_dir`` nor ``$PYROVAE_DATA`` is given."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "pyrovae"


def resolve_data_root(data_dir: str | os.PathLike | None = None) -> Path:
    """``data_dir`` if given, else ``$PYROVAE_DATA``, else :func:`default_data_root`."""
    if data_dir is not None:
        return Path(data_dir).expanduser()
    env = os.environ.get("PYROVAE_DATA")
    return Path(env).expanduser() if env else default_data_root()


def _md5(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _find(root: Path, name: str) -> Path | None:
    for folder in (root / "MNIST" / "raw", root):
        for candidate in (folder / name, folder / (name + ".gz")):
            if candidate.is_file():
                return candidate
    return None


def read_idx(path: str | os.PathLike, expected_magic: int | None = None,
             expected_shape: tuple[int, ...] | None = None, expected_md5: str | None = None) -> np.ndarray:
    """Read one IDX file (raw or ``.gz``) into a uint8 array.

    Args:
        path: the file.
        expected_magic: 2051 for images, 2049 for labels; checked when given.
        expected_shape: checked when given, e.g. ``(10000, 28, 28)``.
        expected_md5: the md5 sum of the (decompressed) content; checked when given.

    Returns:
        ``np.ndarray`` of dtype uint8 and the shape the header gives.

    Raises:
        DataError: a corrupt or truncated ``.gz`` file, wrong magic number, truncated file, a shape other than
            ``expected_shape`` or an md5 sum other than ``expected_md5``; the message names the file.
    """
    path = Path(path)
    gz = path.suffix == ".gz"
    opener = gzip.open if gz else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError, zlib.error) as e:  # gzip: not gzip (OSError), truncated (EOF), corrupt (zlib)
        what = " (a corrupt or truncated .gz file)" if gz else ""
        kind = "zlib.error" if isinstance(e, zlib.error) else type(e).__name__
        raise DataError(f"{path}: cannot read{what}: {kind}: {e}; delete it and fetch the file again") from e
    if len(data) < 8:
        raise DataError(f"{path}: truncated IDX file ({len(data)} bytes); delete it and fetch it again")
    magic = int.from_bytes(data[:4], "big")
    if expected_magic is not None and magic != expected_magic:
        raise DataError(f"{path}: IDX magic number {magic}, expected {expected_magic}; the file is not "
                        "what its name says")
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    if expected_shape is not None and shape != tuple(expected_shape):
        raise DataError(f"{path}: IDX header gives shape {shape}, expected {tuple(expected_shape)}")
    size = int(np.prod(shape))
    if len(data) - header != size:
        raise DataError(f"{path}: truncated or padded IDX file: {len(data) - header} bytes of data, "
                        f"the header promises {size}; delete it and fetch it again")
    if expected_md5 is not None:
        got = hashlib.md5(data).hexdigest()
        if got != expected_md5:
            content = "decompressed content" if gz else "content"
            raise DataError(f"{path}: md5 of its {content} is {got}, expected {expected_md5}: the file is corrupt or "
                            "not the one its name says; delete it and fetch it again")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)


def _missing_message(root: Path) -> str:
    names = ", ".join(MNIST_FILES)
    return (f"MNIST not found under {root} (looked in {root / 'MNIST' / 'raw'} and {root}). Expected the "
            f"four IDX files, raw or .gz: {names}. Pass --data-dir (or set $PYROVAE_DATA) to the folder "
            "that holds them, or allow the download.")


def download_mnist(root: str | os.PathLike, mirrors: tuple[str, ...] = MIRRORS, timeout: float = 30.0) -> Path:
    """Download the four ``.gz`` files into ``<root>/MNIST/raw/``, verifying every md5 sum.

    Each file is written to a temporary name and renamed only once its checksum matches, so an
    interrupted download leaves nothing half-written.

    Raises:
        DataError: no mirror served a file with the right checksum (for instance offline).
    """
    raw = Path(root) / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for name, (_, gz_md5, _, _) in MNIST_FILES.items():
        if _find(Path(root), name) is not None:
            continue
        errors = []
        for mirror in mirrors:
            fd, tmp = tempfile.mkstemp(dir=raw, prefix=f".{name}.", suffix=".part")
            try:
                with os.fdopen(fd, "wb") as out, urllib.request.urlopen(mirror + name + ".gz", timeout=timeout) as r:
                    shutil.copyfileobj(r, out)
                got = _md5(Path(tmp))
                if got != gz_md5:
                    raise DataError(f"md5 {got}, expected {gz_md5}")
                os.replace(tmp, raw / (name + ".gz"))
                break
            except (OSError, urllib.error.URLError, DataError) as e:
                errors.append(f"{mirror}: {e}")
            finally:
                if os.path.exists(tmp):
                    os.unlink(tmp)
        else:
            raise DataError(f"could not download {name}.gz ({'; '.join(errors)}). " + _missing_message(Path(root)))
    return raw


def load_mnist_arrays(data_dir: str | os.PathLike | None = None, download: bool = False,
                      check_md5: bool = True) -> dict[str, np.ndarray]:
    """Read the four MNIST files from the data root.

    Args:
        data_dir: the data root; see :func:`resolve_data_root`.
        download: download missing files (with checksum verification) instead of raising.
        check_md5: verify each file's md5 sum: of the file, or of its decompressed content for a ``.gz``.

    Returns:
        dict with ``train_images`` (60000, 28, 28) uint8, ``train_labels`` (60000,) uint8,
        ``test_images`` (10000, 28, 28) uint8, ``test_labels`` (10000,) uint8.

    Raises:
        DataError: a file is missing (the message names the folder and the four files), truncated,
            or fails its checksum.
    """
    root = resolve_data_root(data_dir)
    paths = {name: _find(root, name) for name in MNIST_FILES}
    if any(p is None for p in paths.values()):
        if not download:
            raise DataError(_missing_message(root))
        download_mnist(root)
        paths = {name: _find(root, name) for name in MNIST_FILES}
    arrays = {}
    for name, (md5, _, magic, shape) in MNIST_FILES.items():
        arrays[name] = read_idx(paths[name], magic, shape, md5 if check_md5 else None)
    return {
        "train_images": arrays["train-images-idx3-ubyte"],
        "train_labels": arrays["train-labels-idx1-ubyte"],
        "test_images": arrays["t10k-images-idx3-ubyte"],
        "test_labels": arrays["t10k-labels-idx1-ubyte"],
    }


def _prepare(images: np.ndarray, labels: np.ndarray, binarization: str, seed: int) -> ImageDataset:
    grey = torch.from_numpy(images.copy()).unsqueeze(1)
    if binarization in RANDOM_TRANSFORMS:
        x = grey
    elif binarization == "static":
        x = binarize(grey, torch.Generator().manual_seed(seed))
    elif binarization == "dequantized_once":
        x, binarization = dequantize(grey, torch.Generator().manual_seed(seed)), "none"
    else:
        x = grey.float() / 255.0
    return ImageDataset(x, torch.from_numpy(labels.astype(np.int64)), binarization)


def load_mnist(data_dir: str | os.PathLike | None = None, binarization: str = "dynamic",
               validation_size: int = 0, seed: int = 0, download: bool = False,
               train_size: int | None = None) -> tuple[ImageDataset, ImageDataset | None, ImageDataset]:
    """MNIST as ``(train, validation, test)`` datasets in memory.

    Args:
        data_dir: the data root; see :func:`resolve_data_root`.
        binarization: ``"dynamic"`` (training images re-binarized at every draw: the standard for
            likelihood results), ``"static"`` (binarized once with seed ``seed``), or ``"none"`` (grey
            values in [0, 1], for continuous likelihoods), or ``"dequantize"`` (uniformly dequantized
            grey values (k + u) / 256 in (0, 1), drawn afresh at every pass; see :func:`dequantize`).
        validation_size: images held out of the 60,000 training images (a fixed random subset chosen
            by ``seed``); 0 for none. Validation images are binarized once, like the test set.
        seed: seed of the validation split and of static binarization.
        download: download missing files (checksums verified) instead of raising.
        train_size: keep only the first ``train_size`` training images after the validation split
            (for quick experiments and tests); None keeps all.

    Returns:
        ``(train, validation or None, test)``. The test set is binarized once with the fixed seed
        :data:`TEST_BINARIZATION_SEED` (or dequantized once with it) unless ``binarization == "none"``,
        so test numbers are reproducible.

    Raises:
        ConfigError: unknown ``binarization``, a ``validation_size`` outside [0, 60000) or a
            ``train_size`` below 1 or above the training images left after the validation split.
        DataError: see :func:`load_mnist_arrays`.
    """
    if binarization not in BINARIZATIONS:
        raise ConfigError(f"binarization={binarization!r} is unknown; choose one of {', '.join(BINARIZATIONS)}")
    arrays = load_mnist_arrays(data_dir, download=download)
    n = arrays["train_images"].shape[0]
    if not 0 <= validation_size < n:
        raise ConfigError(f"validation_size={validation_size} must be in [0, {n})")
    perm = np.random.default_rng(seed).permutation(n)
    val_idx, train_idx = np.sort(perm[:validation_size]), np.sort(perm[validation_size:])
    if train_size is not None:
        if train_size < 1:
            raise ConfigError(f"train_size={train_size} must be at least 1")
        if train_size > len(train_idx):
            raise ConfigError(f"train_size={train_size} is more than the {len(train_idx)} MNIST training images "
                              f"({n} less validation_size={validation_size}); choose at most {len(train_idx)}, or "
                              "leave it out to train on all")
        train_idx = train_idx[:train_size]
    train = _prepare(arrays["train_images"][train_idx], arrays["train_labels"][train_idx], binarization, seed)
    held_out = {"none": "none", "dequantize": "dequantized_once"}.get(binarization, "static")
    validation = None
    if validation_size:
        validation = _prepare(arrays["train_images"][val_idx], arrays["train_labels"][val_idx], held_out,
                              TEST_BINARIZATION_SEED + 1)
    test = _prepare(arrays["test_images"], arrays["test_labels"], held_out, TEST_BINARIZATION_SEED)
    return train, validation, test

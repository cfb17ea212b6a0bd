"""Where data comes from: files, folders, named data sets that ship inside installed packages, and Python
objects (tensors, arrays, ``torch.utils.data.Dataset`` and ``DataLoader``).

:func:`read_source` turns any of them into a :class:`Source`: the data points ``(n, *x_shape)`` (in memory,
or rows of a ``.npy`` file on disk), optional integer labels, optional feature and class names, the
source's own test split where it has one (IDX folders laid out as MNIST's), and its provenance (a file's
sha256, a package's name and version) for the run folder.

Files by suffix: ``.npy``, ``.npz``, ``.pt`` (tensors or dicts of tensors, read with ``weights_only``),
``.csv``/``.tsv``/``.txt`` and ``.parquet`` tables (pandas; Parquet needs pyarrow), ``.h5ad`` (AnnData,
the ``anndata`` extra), IDX files (``*-idx3-ubyte[.gz]``) and folders of PNG/JPEG images (Pillow; images in
sub-folders take the sub-folder's name as their label) or of IDX files named as MNIST's (Fashion-MNIST,
KMNIST). Named sets: ``digits``, ``breast_cancer``, ``wine`` (scikit-learn) and ``pbmc68k_reduced``
(scanpy, the ``anndata`` extra). Options (``--data-option KEY=VALUE``) per source are listed in
:data:`SOURCE_OPTIONS`.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..errors import ArgumentTypeError, ConfigError, DataError
from .dataset import NpyRows

NAMED_SETS = ("digits", "breast_cancer", "wine", "pbmc68k_reduced")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff")
TABLE_SUFFIXES = (".csv", ".tsv", ".txt", ".parquet")
#: The options each kind of source takes (``--data-option KEY=VALUE``), with what they mean.
SOURCE_OPTIONS = {
    "digits": {"as_table": "true: 64 features instead of 1x8x8 images"},
    "breast_cancer": {}, "wine": {}, "pbmc68k_reduced": {},
    "npy": {"labels": "a .npy file of integer labels, one per row",
            "stream": "true: read rows from disk a batch at a time (default: for files over 2 GiB)"},
    "npz": {"key": "the array of data points (default: 'x', or the only array)",
            "labels_key": "the array of labels (default: 'y' or 'labels' when present)"},
    "pt": {"key": "the data points' key in a saved dict (default 'x')",
           "labels_key": "the labels' key (default 'y' or 'labels' when present)"},
    "table": {"label": "the column of class labels (not a feature)", "sep": "the field separator (default by suffix)",
              "drop": "comma-separated columns to leave out (e.g. an id)",
              "header": "false: the first row is data, not column names",
              "schema": "auto: infer column types (real, count, binary, categorical with text labels; "
                        "pyrovae.data.schema), or a schema JSON file; for --likelihood mixed"},
    "h5ad": {"layer": "the layer to read (default X)", "label": "an obs column of class labels",
             "raw": "true: read .raw",
             "stream": "true: read cells from disk a batch at a time, AnnData's backed mode (default: over 2 GiB)"},
    "idx": {"labels": "the IDX file of labels", "test": "an IDX file of test images",
            "test_labels": "the IDX file of test labels"},
    "images": {"mode": "'L' (grey, one channel) or 'RGB' (default: L when every image is grey)"},
}
STREAM_THRESHOLD = 2 * 1024 ** 3


@dataclass
class Source:
    """What a source holds, before splitting and transforms.

    Attributes:
        x: ``(n, *x_shape)`` array (uint8 for grey-level images), or rows read from disk on demand
            (:class:`~pyrovae.data.dataset.NpyRows`, :class:`H5adRows`).
        labels: ``(n,)`` int64 or None.
        test: the source's own test split ``(x, labels)``, or None (then a seeded fraction is held out).
        feature_names, label_names: names where the source has them.
        schema: the column types of a table read with the ``schema`` option (:mod:`pyrovae.data.schema`;
            categorical columns are then integer codes in ``x``), else None.
        provenance: JSON-able: ``{"kind", "path", "sha256"}`` for files, ``{"kind": "named", "package",
            "version"}`` for named sets, ``{"kind": "python", "type"}`` for objects.
    """

    x: "np.ndarray | NpyRows | H5adRows"
    labels: np.ndarray | None = None
    test: tuple | None = None
    feature_names: tuple[str, ...] | None = None
    label_names: tuple[str, ...] | None = None
    provenance: dict = field(default_factory=dict)
    schema: list | None = None

    @property
    def grey_levels(self) -> bool:
        """Grey-level images, binarized or dequantized like MNIST: uint8 data points of shape (C, H, W) held in
        memory (IDX files, image folders, uint8 image arrays). Other uint8 data (a count matrix) is read as
        numbers, and so is a file streamed from disk."""
        return isinstance(self.x, np.ndarray) and self.x.dtype == np.uint8 and self.x.ndim == 4


def sha256(path: str | os.PathLike) -> str:
    """The sha256 of a file, or of a folder (over its images' and IDX files' relative paths and sha256s, sorted:
    a note added beside them changes nothing)."""
    path = Path(path)
    if path.is_dir():
        h = hashlib.sha256()
        for f in sorted(p for p in path.rglob("*") if p.is_file() and (p.suffix.lower() in IMAGE_SUFFIXES
                                                                       or "idx" in p.name.lower())):
            h.update(f"{f.relative_to(path).as_posix()}\0{sha256(f)}\n".encode())
        return h.hexdigest()
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _check_options(kind: str, options: dict) -> None:
    unknown = sorted(set(options) - set(SOURCE_OPTIONS[kind]))
    if unknown:
        known = ", ".join(SOURCE_OPTIONS[kind]) or "none"
        raise ConfigError(f"data option {', '.join(map(repr, unknown))} does not apply to a {kind} source; it "
                          f"takes: {known}")


def _labels(y, n: int, what: str) -> np.ndarray:
    y = np.asarray(y)
    if y.shape != (n,):
        raise DataError(f"{what}: labels have shape {y.shape}, expected ({n},): one label per data point")
    if y.dtype.kind == "f":
        if not np.isfinite(y).all() or (y != np.round(y)).any():
            raise DataError(f"{what}: labels must be integers 0..C-1, found non-integer or missing values")
    elif y.dtype.kind not in "iub":
        raise DataError(f"{what}: labels must be integers 0..C-1, got dtype {y.dtype}; map class names to integers "
                        "(tables: the 'label' option does this for you)")
    y = y.astype(np.int64)
    if len(y) and y.min() < 0:
        raise DataError(f"{what}: labels must be integers 0..C-1, found {y.min()}")
    return y


def _numeric(x, what: str) -> np.ndarray:
    x = np.asarray(x)
    if x.dtype.kind not in "fiub":
        raise DataError(f"{what}: data must be numeric, got dtype {x.dtype}")
    if x.ndim < 1 or x.shape[0] == 0:
        raise DataError(f"{what}: no data points (shape {x.shape})")
    if x.ndim == 1:
        x = x[:, None]
    if x.dtype == np.uint8 and x.ndim == 4:  # grey-level images (C, H, W): kept as levels
        return x
    return x.astype(np.float32)


# --- Python objects ---------------------------------------------------------------------------------------


def from_python(data) -> Source:
    """A tensor or array ``(n, *x_shape)``, a pair ``(x, labels)``, a dict with ``"x"`` (and ``"y"``), a
    ``torch.utils.data.Dataset`` whose items are ``x`` or ``(x, label)``, or a ``DataLoader`` over one (read
    once, in order, into memory).

    Raises:
        ArgumentTypeError: anything else. DataError: non-numeric or ragged data, bad labels.
    """
    kind = type(data).__name__
    labels = None
    if isinstance(data, torch.utils.data.DataLoader):
        if not isinstance(data.sampler, torch.utils.data.SequentialSampler):
            raise DataError(f"a DataLoader with {type(data.sampler).__name__} reads its data in another order at every "
                            "pass, so the split would change: pass DataLoader(dataset, shuffle=False), or the dataset "
                            "(pyrovae shuffles the training split itself)")
        xs, ys = [], []
        for item in data:
            x, y = _item(item, kind)
            xs.append(torch.as_tensor(x))
            if y is not None:
                ys.append(torch.as_tensor(y))
        x, labels = torch.cat(xs).numpy(), (torch.cat(ys).numpy() if ys else None)
    elif isinstance(data, dict):
        x, labels = data["x"], data.get("y")
    elif isinstance(data, (tuple, list)) and len(data) == 2:
        x, labels = data
    elif isinstance(data, (torch.Tensor, np.ndarray)):
        x = data
    elif isinstance(data, torch.utils.data.IterableDataset):
        raise ArgumentTypeError("an IterableDataset has no length or order to split: pass its data as a tensor or "
                                "array, or a map-style Dataset")
    elif isinstance(data, torch.utils.data.Dataset):
        try:
            items = [_item(data[i], kind) for i in range(len(data))]
        except TypeError as e:
            raise ArgumentTypeError(f"a Dataset needs __len__ and __getitem__ (a map-style dataset): {e}") from e
        if not items:
            raise DataError(f"data ({kind}): the dataset is empty")
        try:
            x = torch.stack([torch.as_tensor(it[0]) for it in items]).numpy()
        except RuntimeError as e:
            raise DataError(f"data ({kind}): its items do not all have one shape ({e})") from e
        labels = np.asarray([int(it[1]) for it in items]) if items[0][1] is not None else None
    else:
        raise ArgumentTypeError(f"data must be a tensor, an array, (x, labels), a dict with 'x', a torch Dataset or a "
                                f"DataLoader, got {kind}")
    x = _as_numpy(x)
    x = _numeric(x, f"data ({kind})")
    if labels is not None:
        labels = _labels(_as_numpy(labels), len(x), f"data ({kind})")
    digest = hashlib.sha256(np.ascontiguousarray(x).tobytes())
    if labels is not None:
        digest.update(labels.tobytes())
    return Source(x, labels, provenance={"kind": "python", "type": kind, "sha256": digest.hexdigest()})


def _as_numpy(v) -> np.ndarray:
    if isinstance(v, torch.Tensor):
        v = v.detach().cpu()
        return (v.float() if v.is_floating_point() and v.dtype not in (torch.float32, torch.float64) else v).numpy()
    return np.asarray(v)


def _item(item, kind: str) -> tuple:
    """``(x, label or None)`` of one item of a Dataset or batch of a DataLoader: ``x``, ``(x,)``, ``(x, y)`` or a
    dict with ``"x"`` (and ``"y"``)."""
    if isinstance(item, dict):
        if "x" not in item:
            raise DataError(f"data ({kind}): dict items need an 'x' (and optionally 'y'); got keys {sorted(item)}")
        return item["x"], item.get("y")
    if isinstance(item, (tuple, list)):
        if len(item) not in (1, 2):
            raise DataError(f"data ({kind}): items must be x, (x,) or (x, label); got {len(item)} parts")
        return item[0], (item[1] if len(item) == 2 else None)
    return item, None


# --- named sets -------------------------------------------------------------------------------------------


def _named(name: str, options: dict) -> Source:
    _check_options(name, options)
    if name == "pbmc68k_reduced":
        from .pbmc import load_pbmc68k_reduced_counts
        d = load_pbmc68k_reduced_counts()
        return Source(d["counts"].astype(np.float32), d["labels"], feature_names=tuple(d["genes"]),
                      label_names=tuple(d["label_names"]),
                      provenance={"kind": "named", "name": name, "package": "scanpy", "version": _version("scanpy"),
                                  "cells_dropped": int(d["cells_failed"])})
    import sklearn.datasets
    bunch = getattr(sklearn.datasets, f"load_{name}")()
    x = bunch.data.astype(np.float32)
    if name == "digits" and not options.get("as_table", False):
        x = x.reshape(-1, 1, 8, 8)
    features = None if name == "digits" else tuple(map(str, bunch.feature_names))
    return Source(x, bunch.target.astype(np.int64), feature_names=features,
                  label_names=tuple(map(str, bunch.target_names)),
                  provenance={"kind": "named", "name": name, "package": "scikit-learn",
                              "version": _version("scikit-learn")})


# --- files --------------------------------------------------------------------------------------------------


def _read_table(path: Path, options: dict) -> Source:
    import pandas as pd

    _check_options("table", options)
    try:
        if path.suffix == ".parquet":
            try:
                frame = pd.read_parquet(path)
            except ImportError as e:
                raise DataError(f"{path}: reading Parquet needs pyarrow: pip install pyarrow ({e})") from e
        else:
            default = {".tsv": "\t", ".txt": r"\s+"}.get(path.suffix, ",")  # .txt: np.savetxt's whitespace
            header = options.get("header", True)
            if header not in (True, False, "none"):
                raise ConfigError(f"data option header={header!r}: use header=false for a table without a header row")
            frame = pd.read_csv(path, sep=options.get("sep", default), header=0 if header is True else None)
            if header is not True:
                frame.columns = [f"column_{j}" for j in range(frame.shape[1])]
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, ValueError, OSError) as e:
        raise DataError(f"{path}: cannot read it as a table ({str(e).strip()}); every row needs the same number of "
                        "fields and a header row of column names") from e
    if frame.shape[0] == 0:
        raise DataError(f"{path}: the table has a header but no rows")
    if options.get("header", True) is True and all(_is_number(c) for c in frame.columns):
        raise DataError(f"{path}: the first row ({', '.join(map(str, list(frame.columns)[:4]))} ...) looks like data, "
                        "not column names: add a header row, or pass --data-option header=false")
    first = str(frame.columns[0])
    if first.startswith("Unnamed: 0") and np.array_equal(frame.iloc[:, 0].to_numpy(), np.arange(len(frame))):
        frame = frame.drop(columns=frame.columns[0])  # the row index pandas writes with to_csv(index=True)
    for column in [c.strip() for c in str(options.get("drop", "")).split(",") if c.strip()]:
        if column not in frame.columns:
            raise ConfigError(f"{path}: no column {column!r} to drop; its columns are "
                              f"{', '.join(map(str, frame.columns))}")
        frame = frame.drop(columns=column)
    labels = label_names = None
    if "label" in options:
        column = str(options["label"])
        if column not in frame.columns:
            raise ConfigError(f"{path}: no column {column!r} for labels; its columns are "
                              f"{', '.join(map(str, frame.columns))}")
        codes, names = pd.factorize(frame.pop(column), sort=True)
        if (codes < 0).any():
            raise DataError(f"{path}: the label column {column!r} has {(codes < 0).sum()} missing values")
        labels, label_names = codes.astype(np.int64), tuple(map(str, names))
    if options.get("schema") not in (None, False, "none"):  # mixed types: categories become codes
        from .schema import encode_frame, infer_schema, read_schema
        schema = infer_schema(frame) if options["schema"] == "auto" else read_schema(options["schema"])
        x, schema = encode_frame(frame, schema, str(path))
        return Source(x, labels, feature_names=tuple(map(str, frame.columns)), label_names=label_names, schema=schema)
    text = [str(c) for c in frame.columns if not pd.api.types.is_numeric_dtype(frame[c]) and not
            pd.api.types.is_bool_dtype(frame[c])]
    if text:
        shown = ", ".join(map(repr, text[:5])) + (" ..." if len(text) > 5 else "")
        raise DataError(f"{path}: non-numeric column(s) {shown}: "
                        "every feature must be a number. Name a class column with --data-option label=COLUMN, leave "
                        "others out with --data-option drop=A,B, or model them as categories with --likelihood mixed "
                        "--data-option schema=auto")
    if frame.shape[1] == 0 or frame.shape[0] == 0:
        raise DataError(f"{path}: the table has no feature columns or no rows")
    x = frame.to_numpy(dtype=np.float32)
    return Source(x, labels, feature_names=tuple(map(str, frame.columns)), label_names=label_names)


def _is_number(text) -> bool:
    try:
        float(str(text))
    except ValueError:
        return False
    return True


def _read_images(folder: Path, options: dict) -> Source:
    from PIL import Image, UnidentifiedImageError

    _check_options("images", options)
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise DataError(f"{folder}: no images ({', '.join(IMAGE_SUFFIXES)}) in this folder or its sub-folders")
    classes = sorted({p.parent.relative_to(folder).as_posix() for p in files})
    labelled = classes != ["."]
    if labelled and "." in classes:
        raise DataError(f"{folder}: images both at the top and in sub-folders: put every image in a class sub-folder, "
                        "or none")
    opened = []
    for p in files:
        try:
            with Image.open(p) as im:
                im.load()
                opened.append(im.copy())
        except (UnidentifiedImageError, OSError) as e:
            raise DataError(f"{p}: not a readable image ({e}); remove it from the folder") from e
    sizes = {}
    for p, im in zip(files, opened):
        sizes.setdefault(im.size, p)
    if len(sizes) > 1:
        (s1, p1), (s2, p2) = list(sizes.items())[:2]
        raise DataError(f"{folder}: images of different sizes ({p1.name}: {s1[0]}x{s1[1]}, "
                        f"{p2.name}: {s2[0]}x{s2[1]}); "
                        "resize them to one size first")
    deep = [p.name for p, im in zip(files, opened) if im.mode in ("I", "I;16", "I;16B", "I;16L", "F")]
    if deep:
        raise DataError(f"{folder}: 16-bit or floating-point images ({', '.join(deep[:3])}): pyrovae reads 8-bit "
                        "images; convert them to 8 bits first")
    mode = options.get("mode") or ("L" if all(_is_grey(im) for im in opened) else "RGB")
    if mode not in ("L", "RGB"):
        raise ConfigError(f"image mode {mode!r}: choose L (grey) or RGB")
    x = np.stack([np.asarray(im.convert("RGB").convert("L") if mode == "L" and im.mode not in ("L", "1", "LA")
                             else im.convert(mode), dtype=np.uint8) for im in opened])
    x = x[:, None] if mode == "L" else x.transpose(0, 3, 1, 2)
    labels = names = None
    if labelled:
        names = tuple(classes)
        index = {c: i for i, c in enumerate(classes)}
        labels = np.array([index[p.parent.relative_to(folder).as_posix()] for p in files], dtype=np.int64)
    return Source(np.ascontiguousarray(x), labels, label_names=names)


def _is_grey(im) -> bool:
    """One channel of grey (1-bit, L, L with alpha), or a palette or RGB image whose colours are all grey."""
    if im.mode in ("L", "1", "LA"):
        return True
    rgb = np.asarray(im.convert("RGB"))
    return bool((rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all())


def _idx_images(path: Path) -> np.ndarray:
    from .mnist import read_idx
    x = read_idx(path)
    if x.ndim != 3:
        raise DataError(f"{path}: an IDX file of images holds (n, height, width), this one {x.shape}")
    return x[:, None]


def _idx_labels(path: Path, n: int) -> np.ndarray:
    from .mnist import read_idx
    return _labels(read_idx(path), n, str(path))


def _idx_folder(folder: Path) -> Source | None:
    from .mnist import MNIST_FILES, _find
    paths = {name: _find(folder, name) for name in MNIST_FILES}
    if any(p is None for p in paths.values()):
        return None
    names = list(MNIST_FILES)
    x, test_x = _idx_images(paths[names[0]]), _idx_images(paths[names[2]])
    return Source(x, _idx_labels(paths[names[1]], len(x)),
                  test=(test_x, _idx_labels(paths[names[3]], len(test_x))))


def _read_file(path: Path, options: dict) -> Source:
    name, suffix = path.name.lower(), path.suffix.lower()
    if "idx" in name and ("ubyte" in name or suffix == ".idx"):
        _check_options("idx", options)
        x = _idx_images(path)
        labels = _idx_labels(Path(options["labels"]), len(x)) if "labels" in options else None
        test = None
        if "test" in options:
            tx = _idx_images(Path(options["test"]))
            test = (tx, _idx_labels(Path(options["test_labels"]), len(tx)) if "test_labels" in options else None)
        return Source(x, labels, test=test)
    if suffix == ".npy":
        _check_options("npy", options)
        stream = options.get("stream")
        stream = path.stat().st_size > STREAM_THRESHOLD if stream is None else bool(stream)
        x = NpyRows(path) if stream else _numeric(_load_npy(path), str(path))
        if stream and x.dtype.kind not in "fiu":
            raise DataError(f"{path}: a streamed array must be numeric, got {x.dtype}")
        labels = _labels(_load_npy(Path(options["labels"])), len(x), options["labels"]) if "labels" in options else None
        return Source(x, labels)
    if suffix == ".npz":
        _check_options("npz", options)
        try:
            with np.load(path, allow_pickle=False) as arrays:
                arrays = dict(arrays)
        except Exception as e:  # OSError, ValueError, zipfile.BadZipFile, ...
            raise DataError(f"{path}: cannot read it as a .npz file ({e})") from e
        return _from_mapping(arrays, options, str(path))
    if suffix == ".pt":
        _check_options("pt", options)
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # torch raises many kinds for a corrupt or unsafe file
            raise DataError(f"{path}: cannot read it as a saved tensor or dict of tensors ({e})") from e
        if isinstance(obj, torch.Tensor):
            return Source(_numeric(_as_numpy(obj), str(path)))
        if isinstance(obj, dict):
            return _from_mapping({k: _as_numpy(v) if isinstance(v, torch.Tensor) else v for k, v in obj.items()},
                                 options, str(path))
        raise DataError(f"{path}: holds a {type(obj).__name__}; save a tensor (n, ...) or a dict "
                        "{'x': ..., 'y': ...}")
    if suffix in TABLE_SUFFIXES:
        return _read_table(path, options)
    if suffix == ".h5ad":
        return _read_h5ad(path, options)
    raise DataError(f"{path}: pyrovae does not read {suffix or 'files without a suffix'}; it reads .npy, .npz, .pt, "
                    f".csv, .tsv, .txt, .parquet, .h5ad, IDX files and folders of images")


def _load_npy(path: Path) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: cannot read it as a .npy file of numbers ({e})") from e


def _from_mapping(arrays: dict, options: dict, what: str) -> Source:
    key = options.get("key") or ("x" if "x" in arrays else next(iter(arrays)) if len(arrays) == 1 else None)
    if key not in arrays:
        raise ConfigError(f"{what}: say which array holds the data points with --data-option key=NAME; it holds "
                          f"{', '.join(map(repr, arrays))}")
    x = _numeric(arrays[key], what)
    labels_key = options.get("labels_key") or next((k for k in ("y", "labels") if k in arrays), None)
    if labels_key is not None and labels_key not in arrays:
        raise ConfigError(f"{what}: no array {labels_key!r} for labels; it holds {', '.join(map(repr, arrays))}")
    labels = _labels(arrays[labels_key], len(x), what) if labels_key else None
    return Source(x, labels)


def _read_h5ad(path: Path, options: dict) -> Source:
    _check_options("h5ad", options)
    try:
        import anndata
    except ImportError as e:
        raise DataError(f"{path}: reading .h5ad files needs anndata: pip install 'pyrovae[anndata]'") from e
    stream = options.get("stream")
    stream = path.stat().st_size > STREAM_THRESHOLD if stream is None else bool(stream)
    if stream and (options.get("raw") or options.get("layer")):
        raise ConfigError(f"{path}: a streamed .h5ad file is read from its X only (AnnData's backed mode); leave out "
                          "raw and layer, or stream=false to read the file into memory")
    try:
        adata = anndata.read_h5ad(path, backed="r" if stream else None)
    except Exception as e:  # h5py and anndata raise many kinds for a corrupt file
        raise DataError(f"{path}: cannot read it as an .h5ad file ({e})") from e
    if options.get("raw") and adata.raw is None:
        raise ConfigError(f"{path}: raw=true, but the file has no .raw; leave the option out to read X")
    matrix = adata.raw.to_adata() if options.get("raw") else adata
    layer = options.get("layer")
    if layer is not None and layer not in matrix.layers:
        raise ConfigError(f"{path}: no layer {layer!r}; it has {', '.join(matrix.layers) or 'none'} (default: X)")
    if stream:
        x = H5adRows(adata)
    else:
        x = matrix.layers[layer] if layer is not None else matrix.X
        x = _numeric(x.toarray() if hasattr(x, "toarray") else np.asarray(x), str(path))
    labels = names = None
    if "label" in options:
        column = str(options["label"])
        if column not in adata.obs:
            raise ConfigError(f"{path}: no obs column {column!r}; it has {', '.join(map(str, adata.obs.columns))}")
        import pandas as pd
        labels, uniques = pd.factorize(adata.obs[column], sort=True)
        if (labels < 0).any():
            raise DataError(f"{path}: the obs column {column!r} has {(labels < 0).sum()} missing values")
        labels, names = labels.astype(np.int64), tuple(map(str, uniques))
    return Source(x, labels, feature_names=tuple(map(str, matrix.var_names)), label_names=names)


class H5adRows:
    """The rows of an ``.h5ad`` file's X, read on demand through AnnData's backed mode (dense or sparse X):
    ``rows[index]`` reads only those cells, as float32 ``(len(index), n_genes)``."""

    def __init__(self, adata):
        self.adata = adata
        self.shape = (adata.n_obs, adata.n_vars)
        self.dtype = np.dtype(np.float32)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index) -> np.ndarray:
        index = np.asarray(index, dtype=np.int64).reshape(-1)
        unique, inverse = np.unique(index, return_inverse=True)  # h5py reads increasing, distinct rows
        rows = self.adata.X[unique]
        rows = rows.toarray() if hasattr(rows, "toarray") else np.asarray(rows)
        return np.asarray(rows, dtype=np.float32)[inverse]


def read_source(source, options: dict | None = None) -> Source:
    """The :class:`Source` that ``source`` names: a named set (:data:`NAMED_SETS`), a file or folder path, or a
    Python object (see :func:`from_python`). Files and folders record their sha256.

    Raises:
        DataError: a missing, unreadable or malformed file or folder (ragged or non-numeric table, empty or
            mixed-size image folder, bad labels). ConfigError: an option the source does not take.
    """
    options = dict(options or {})
    if not isinstance(source, (str, os.PathLike)):
        if options:
            raise ConfigError("data options apply to named sets and files, not to data passed as Python objects")
        return from_python(source)
    if str(source) in NAMED_SETS:
        return _named(str(source), options)
    path = Path(source).expanduser()
    if not path.exists():
        raise DataError(f"{path}: no such file or folder; --data takes a file, a folder or one of the named sets "
                        f"mnist, {', '.join(NAMED_SETS)}")
    if path.is_dir():
        loaded = _idx_folder(path)
        if loaded is None:
            loaded = _read_images(path, options)
        elif options:
            raise ConfigError(f"{path}: a folder of IDX files takes no data options")
    else:
        loaded = _read_file(path, options)
    loaded.provenance = {"kind": "file" if path.is_file() else "folder", "path": str(path.resolve()),
                         "sha256": sha256(path)}
    return loaded

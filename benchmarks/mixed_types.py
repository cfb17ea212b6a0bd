"""Imputation of mixed-type tables with 50% MCAR entries (issue 21, "Mixed types"): pyrovae (a VAE with the
mixed-type likelihood, trained with the MIWAE bound) against mean/mode imputation, KNNImputer, IterativeImputer
with Bayesian ridge (MICE-like) and with a random forest (missForest-like), on the same masks.

Tables:

* ``wine``: its 13 measurements (real, standardized over all rows) and its class as a categorical column (3 classes);
* ``digits_mixed``, derived from scikit-learn's 8x8 digits (1797 rows): 16 binary columns (pixel > 8 for the
  pixels of rows 2 and 5 of the image), 16 count columns (the raw 0..16 values of the pixels of rows 3 and 4,
  columns 0-7), 8 count columns (each image row's sum // 16) and the digit label as a categorical column (10
  classes): 41 columns.

Per type, over the hidden entries: RMSE (real, standardized units), accuracy (binary, categorical), mean absolute
error (count, in counts). The baselines see the table with every column standardized by its observed mean and
sd (so that KNN distances and the regressions treat columns alike), impute, are mapped back, and then rounded
and clipped to valid values (binary to 0/1, counts to whole numbers >= 0, categorical codes to 0..K-1); the
"mean/mode" baseline uses the mode for binary and categorical columns and the rounded mean for counts.
pyrovae: VAE z_dim 8, MLP 128-128, the encoder reads the one-hot inputs and the mask, IWAE K = 20 (= MIWAE),
early stopping (patience 20) on 10% of rows; imputation with K = 1000 importance draws: the weighted mean of real
columns, the rounded weighted mean of counts, the most probable class of binary and categorical columns.

Run: python benchmarks/mixed_types.py [--datasets wine,digits_mixed] [--seeds 0,1] [--epochs 200]
Prints a markdown table and writes JSON to benchmarks/results/mixed_types.json (or --out).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from imputation import train_miwae  # noqa: E402

from pyrovae.components.mixed import MixedLikelihood  # noqa: E402
from pyrovae.data.missing import mcar  # noqa: E402
from pyrovae.evaluation.imputation import impute  # noqa: E402


def load(name: str) -> tuple[np.ndarray, list[dict]]:
    """``(x (n, D), schema)``: codes for categorical columns."""
    import sklearn.datasets
    if name == "wine":
        bunch = sklearn.datasets.load_wine()
        x = bunch.data.astype(np.float64)
        x = (x - x.mean(0)) / x.std(0)
        schema = [{"name": f, "type": "real"} for f in bunch.feature_names]
        schema.append({"name": "class", "type": "categorical", "categories": list(bunch.target_names)})
        return np.column_stack([x, bunch.target]), schema
    if name == "digits_mixed":
        bunch = sklearn.datasets.load_digits()
        images = bunch.images  # (n, 8, 8), 0..16
        binary = (images[:, [2, 5], :] > 8).reshape(len(images), -1).astype(np.float64)
        counts = images[:, [3, 4], :].reshape(len(images), -1)
        row_sums = images.sum(2) // 16
        schema = ([{"name": f"on_{r}_{c}", "type": "binary"} for r in (2, 5) for c in range(8)]
                  + [{"name": f"pixel_{r}_{c}", "type": "count"} for r in (3, 4) for c in range(8)]
                  + [{"name": f"row_sum_{r}", "type": "count"} for r in range(8)]
                  + [{"name": "digit", "type": "categorical", "categories": [str(d) for d in range(10)]}])
        return np.column_stack([binary, counts, row_sums, bunch.target]).astype(np.float64), schema
    raise ValueError(name)


def valid(x: np.ndarray, schema: list[dict]) -> np.ndarray:
    """Round and clip imputed values to the values each type takes."""
    x = x.copy()
    for j, c in enumerate(schema):
        if c["type"] == "binary":
            x[:, j] = np.clip(np.round(x[:, j]), 0, 1)
        elif c["type"] == "count":
            x[:, j] = np.clip(np.round(x[:, j]), 0, None)
        elif c["type"] == "categorical":
            x[:, j] = np.clip(np.round(x[:, j]), 0, len(c["categories"]) - 1)
    return x


def baselines(x_missing: np.ndarray, schema: list[dict], seed: int, forest_max_iter: int) -> dict:
    from sklearn.ensemble import RandomForestRegressor
    from sklearn.experimental import enable_iterative_imputer  # noqa: F401
    from sklearn.impute import IterativeImputer, KNNImputer, SimpleImputer
    from sklearn.linear_model import BayesianRidge

    mu, sd = np.nanmean(x_missing, 0), np.nanstd(x_missing, 0)
    sd = np.where(sd > 0, sd, 1.0)
    z = (x_missing - mu) / sd
    out = {}
    t = time.time()
    modes = SimpleImputer(strategy="most_frequent").fit_transform(x_missing)
    means = SimpleImputer(strategy="mean").fit_transform(x_missing)
    discrete = np.array([c["type"] in ("binary", "categorical") for c in schema])
    out["mean/mode"] = (valid(np.where(discrete, modes, means), schema), time.time() - t)
    imputers = {
        "knn (k=5)": KNNImputer(n_neighbors=5),
        "MICE (BayesianRidge)": IterativeImputer(BayesianRidge(), max_iter=10, random_state=seed),
        "missForest (RF 50)": IterativeImputer(RandomForestRegressor(n_estimators=50, random_state=seed, n_jobs=1),
                                               max_iter=forest_max_iter, random_state=seed),
    }
    for name, imputer in imputers.items():
        t = time.time()
        out[name] = (valid(imputer.fit_transform(z) * sd + mu, schema), time.time() - t)
    return out


def errors(imputed: np.ndarray, truth: np.ndarray, mask: np.ndarray, schema: list[dict]) -> dict:
    """Per type over the hidden entries: rmse (real), mae (count), accuracy (binary, categorical)."""
    out = {}
    for kind, metric in (("real", "rmse"), ("count", "mae"), ("binary", "accuracy"), ("categorical", "accuracy")):
        cols = [j for j, c in enumerate(schema) if c["type"] == kind]
        if not cols:
            continue
        hidden = ~mask[:, cols]
        diff = (imputed[:, cols] - truth[:, cols])[hidden]
        out[f"{kind} {metric}"] = float({"rmse": np.sqrt(np.mean(diff ** 2)), "mae": np.mean(np.abs(diff)),
                                         "accuracy": np.mean(diff == 0)}[metric])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default="wine,digits_mixed")
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--rate", type=float, default=0.5)
    parser.add_argument("--epochs", type=int, default=200)
    parser.add_argument("--forest-max-iter", type=int, default=3)
    parser.add_argument("--out", default="benchmarks/results/mixed_types.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    results = []
    methods = ["pyrovae (mixed, MIWAE)", "mean/mode", "knn (k=5)", "MICE (BayesianRidge)", "missForest (RF 50)"]
    for name in args.datasets.split(","):
        x, schema = load(name)
        for seed in map(int, args.seeds.split(",")):
            x_missing = mcar(x, args.rate, seed=1000 + seed)
            mask = ~np.isnan(x_missing)
            row = {"dataset": name, "seed": seed, "shape": list(x.shape), "missing": int((~mask).sum())}
            for method, (imputed, seconds) in baselines(x_missing, schema, seed, args.forest_max_iter).items():
                row[method] = {**errors(imputed, x, mask, schema), "seconds": seconds}
            t = time.time()
            d = x.shape[1]
            vae, facts = train_miwae(x_missing, mask, seed, args.epochs,
                                     likelihood=lambda: MixedLikelihood((d,), schema=schema))
            result = impute(vae, torch.tensor(np.nan_to_num(x_missing), dtype=torch.float32),
                            torch.tensor(mask, dtype=torch.float32), num_samples=1000, seed=seed)
            row[methods[0]] = {**errors(result["imputed"].double().numpy(), x, mask, schema), **facts,
                               "seconds": time.time() - t}
            results.append(row)
            print(json.dumps(row), flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2))
    print("\n| data (n x d) | metric (hidden entries) | " + " | ".join(methods) + " |")
    print("|---|---|" + "---:|" * len(methods))
    for name in args.datasets.split(","):
        rows = [r for r in results if r["dataset"] == name]
        for metric in [k for k in rows[0][methods[0]] if k.split()[-1] in ("rmse", "mae", "accuracy")]:
            def cell(values):
                values = np.asarray(values)
                se = values.std(ddof=1) / np.sqrt(len(values)) if len(values) > 1 else float("nan")
                return f"{values.mean():.3f} +- {se:.3f}"
            cells = [cell([r[m][metric] for r in rows]) for m in methods]
            print(f"| {name} ({rows[0]['shape'][0]} x {rows[0]['shape'][1]}) | {metric} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()

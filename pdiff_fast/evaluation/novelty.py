"""Does p-diff make new models or copy its training checkpoints? The measures, the baselines a
generator has to beat, and a verdict computed from them (Zeng et al., arXiv 2506.07998, found
that p-diff mostly reproduces or interpolates its checkpoints).

Distance: RMS over the subset's values, each parameter tensor standardised by the originals'
mean and std of that tensor (pdiff_fast.params.Standardizer, the scaling the pipeline trains
on), so every tensor counts at its own scale: ||z(a) - z(b)|| / sqrt(D). A model's novelty is
its distance to the NEAREST original; the yardstick is the originals' spacing, tau = the median
over the originals of the distance to their nearest other original.

Baselines (each evaluated like the generated models, K rows unless said):
- noise: every original + Gaussian noise of a fixed sigma (raw units, the report's σ list);
- matched noise: every original + noise in standardised units whose RMS equals the generated
  models' median distance to their nearest original: as far from the originals as p-diff's
  models, with no learning at all;
- interpolation: random convex combinations of two different originals (K >= 2);
- weight mean: the average of the originals (one model);
- ensemble: the originals' averaged softmax outputs (one predictor; no parameters of its own).

A model is "new and better" when its accuracy beats the originals' median and it lies farther
than tau from every original.
"""
from __future__ import annotations

import copy
import math

import torch
from torch import nn

from ..params import ParamSpec, Standardizer

COPY_RATIO = 0.1  # median nearest-original distance <= 0.1 tau: copies
SAME_ACCURACY = 0.1  # points of median accuracy within which two sets are called level
BASELINES = ("noise matched", "interpolation", "weight mean", "ensemble")  # report order (JSON sorts keys)


def summary(acc: torch.Tensor) -> dict[str, float]:
    acc = acc[torch.isfinite(acc)].double()
    if acc.numel() == 0:
        return {"best": math.nan, "mean": math.nan, "median": math.nan, "n": 0}
    return {"best": acc.max().item(), "mean": acc.mean().item(), "median": acc.median().item(), "n": acc.numel()}


def standardizer(spec: ParamSpec, original: torch.Tensor) -> Standardizer:
    """The per-tensor scaling of the distances (fitted on the originals)."""
    return Standardizer.fit(spec, original.detach().cpu())


def nearest_distance(x: torch.Tensor, ref: torch.Tensor, *, exclude_self: bool = False, transform=None,
                     memory_budget_bytes: int = 1 << 30) -> tuple[torch.Tensor, torch.Tensor]:
    """(distance, index) of the nearest row of ref (K, D) for every row of x (N, D), as RMS
    over D; exclude_self: x is ref and a row's own index does not count (NaN with K = 1).
    transform (e.g. Standardizer.transform) is applied to ref and to each block of x.

    The candidate comes from one float32 matrix product per block of rows (blocks sized to the
    budget); its distance is then recomputed directly in float64, so a copy is at 0.0 exactly.
    Rows holding NaN / Inf get NaN."""
    n, k, d = x.shape[0], ref.shape[0], x.shape[1]
    dist = torch.full((n,), math.nan, dtype=torch.float64)
    index = torch.full((n,), -1, dtype=torch.int64)
    if n == 0 or k == 0 or (exclude_self and k < 2):
        return dist, index
    transform = transform or (lambda t: t)
    ref = transform(ref)
    ref32 = ref.float()
    ref_sq = (ref32 * ref32).sum(1)
    rows = max(1, memory_budget_bytes // (4 * (3 * k + 2 * d)))
    for r0 in range(0, n, rows):
        xb = transform(x[r0:r0 + rows]).float()
        sq = (xb * xb).sum(1, keepdim=True) + ref_sq - 2 * xb @ ref32.T  # (b, K) squared distances
        if exclude_self:
            sq[torch.arange(xb.shape[0]), torch.arange(r0, r0 + xb.shape[0])] = math.inf
        best = sq.argmin(1)
        exact = (xb.double() - ref[best].double()).pow(2).mean(1).sqrt()
        ok = torch.isfinite(exact)
        dist[r0:r0 + xb.shape[0]] = torch.where(ok, exact, torch.full_like(exact, math.nan)).cpu()
        index[r0:r0 + xb.shape[0]] = torch.where(ok, best, torch.full_like(best, -1)).cpu()
    return dist, index


def spread(original: torch.Tensor, transform=None, max_rows: int = 2048) -> float:
    """The originals' extent: the median distance between two different originals (evenly spaced
    max_rows of them when there are more; NaN with one)."""
    k = original.shape[0]
    if k < 2:
        return math.nan
    rows = original[torch.linspace(0, k - 1, min(k, max_rows)).round().long().unique().to(original.device)]
    z = (transform or (lambda t: t))(rows).double()
    d = torch.cdist(z, z) / math.sqrt(z.shape[1])
    return d[torch.triu_indices(len(z), len(z), 1).unbind()].median().item()


def interpolations(original: torch.Tensor, n: int, generator: torch.Generator) -> torch.Tensor | None:
    """n random convex combinations lam * a + (1 - lam) * b of two different originals, lam ~ U(0, 1)."""
    k = original.shape[0]
    if k < 2:
        return None
    i = torch.randint(0, k, (n,), generator=generator)
    j = (i + torch.randint(1, k, (n,), generator=generator)) % k  # never i
    lam = torch.rand(n, 1, generator=generator, dtype=torch.float64)
    a, b = original[i.to(original.device)].double(), original[j.to(original.device)].double()
    return (lam.to(a.device) * a + (1 - lam.to(a.device)) * b).to(original.dtype)


def matched_noise(original: torch.Tensor, std: Standardizer, rms: float, generator: torch.Generator) -> torch.Tensor:
    """Every original + Gaussian noise of RMS `rms` in the standardised units of the distances."""
    z = std.transform(original.cpu().double())
    noisy = z + rms * torch.randn(z.shape, generator=generator, dtype=torch.float64)
    return std.inverse(noisy).to(original.dtype).to(original.device)


def baseline_sets(original: torch.Tensor, std: Standardizer, matched_rms: float, seed: int) -> dict:
    """The baselines that are parameter sets, in report order: matched noise (when the generated
    models have a finite median distance), interpolation (K >= 2), weight mean."""
    gen = torch.Generator().manual_seed(seed)
    out = {}
    if math.isfinite(matched_rms):
        out["noise matched"] = matched_noise(original, std, matched_rms, gen)
    mixed = interpolations(original, original.shape[0], gen)
    if mixed is not None:
        out["interpolation"] = mixed
    out["weight mean"] = original.double().mean(0, keepdim=True).to(original.dtype)
    return out


def ensemble_predictions(base_model: nn.Module, spec: ParamSpec, original: torch.Tensor, x_test: torch.Tensor,
                         batch_size: int = 1024) -> torch.Tensor:
    """(n_test,) class predictions of the originals' output ensemble: the mean of their softmax
    outputs (in float64), one original at a time in a copy of the base model (eval mode)."""
    device = next(base_model.parameters()).device
    model = copy.deepcopy(base_model).eval()
    probs = None
    with torch.no_grad():
        for row in original:
            spec.load_into(model, row.to(device))
            p = torch.cat([model(x_test[s:s + batch_size].to(device)).double().softmax(-1)
                           for s in range(0, x_test.shape[0], batch_size)])
            probs = p if probs is None else probs + p
    return probs.argmax(-1).cpu()


def _stats(values: torch.Tensor) -> dict:
    v = values[torch.isfinite(values)].double()
    if v.numel() == 0:
        return {"median": math.nan, "mean": math.nan, "min": math.nan, "max": math.nan}
    return {"median": v.median().item(), "mean": v.mean().item(), "min": v.min().item(), "max": v.max().item()}


def set_measures(accuracy: torch.Tensor, distance: torch.Tensor | None, max_iou: torch.Tensor, *,
                 tau: float, accuracy_bar: float) -> dict:
    """One set's novelty: its nearest-original distances, max IoU to the originals and the share
    of its models that are new and better (over all its models; a NaN model counts as neither)."""
    out = {"accuracy": summary(accuracy), "max_iou_mean": max_iou.double().nanmean().item()}
    if distance is None:
        out.update({"nn_distance": None, "distance_ratio": None, "new_and_better": None})
        return out
    better = accuracy.double().cpu() > accuracy_bar
    farther = distance > tau if math.isfinite(tau) else torch.zeros_like(better)
    out["nn_distance"] = _stats(distance)
    median = out["nn_distance"]["median"]
    out["distance_ratio"] = median / tau if math.isfinite(tau) and tau > 0 else None
    out["new_and_better"] = (better & farther).double().mean().item() if accuracy.numel() else math.nan
    return out


def _level(a: float, b: float) -> str:
    if not (math.isfinite(a) and math.isfinite(b)):
        return "cannot be compared with"
    if abs(a - b) <= SAME_ACCURACY:
        return "level with"
    return "above" if a > b else "below"


def verdict(sets: dict, tau: float, extent: float = math.nan) -> dict:
    """The verdict on the generated set, computed from the measures only.

    label (how new): "copies" (median nearest-original distance <= COPY_RATIO * tau, or exactly 0 when
    tau is undefined), "close" (under tau: nearer an original than the originals are to each
    other), "new" (tau or farther), "undetermined" (one original and no copies: no spacing to
    compare with) or "no finite models". The text gives the numbers behind it, the accuracy
    against the originals and against the baselines that need no learning."""
    g = sets["generated"]
    median = g["nn_distance"]["median"]
    if not math.isfinite(median):
        return {"label": "no finite models", "accuracy": "cannot be compared with",
                "text": "No generated model has finite parameters."}
    ratio = g["distance_ratio"]
    if ratio is None:
        label = "copies" if median == 0.0 else "undetermined"
        where = (f"median distance to the nearest original {median:.3g}; with one original there is no spacing "
                 "to compare it with")
    else:
        label = "copies" if ratio <= COPY_RATIO else ("close" if ratio < 1 else "new")
        where = (f"median distance to the nearest original {median:.3g}, {ratio:.2f}x the originals' own "
                 f"spacing (median nearest-other-original distance {tau:.3g})")
    opening = {"copies": "The generated models are copies of originals",
               "close": "The generated models lie closer to an original than the originals lie to each other",
               "new": "The generated models lie as far from the originals as the originals lie from each other, "
                      "or farther",
               "undetermined": "How new the generated models are cannot be judged"}[label]
    acc = g["accuracy"]["median"]
    parts = [f"{opening}: {where}."]
    orig = sets["original"]["accuracy"]["median"]
    parts.append(f"Their median accuracy {acc:.2f} is {_level(acc, orig)} the originals' {orig:.2f}")
    rivals = [(name, s["accuracy"]["median"]) for name, s in sets.items()
              if name in BASELINES]
    if rivals:
        parts[-1] += "; " + ", ".join(f"{_level(acc, v)} {name} ({v:.2f})" for name, v in rivals)
    parts[-1] += "."
    noise = sets.get("noise matched")
    if noise is not None:
        word = "less" if g["max_iou_mean"] < noise["max_iou_mean"] else "as much or more"
        parts.append(f"Their wrong predictions overlap the originals' {word} than those of noise at the same "
                     f"distance (mean max IoU {g['max_iou_mean']:.3f} vs {noise['max_iou_mean']:.3f}).")
    if math.isfinite(extent) and extent > 0:
        parts.append(f"For scale: two originals lie {extent:.3g} apart (median over pairs); the generated models' "
                     f"median distance to the nearest original is {median / extent:.2f}x that.")
    share = g["new_and_better"]
    if share is not None and math.isfinite(share):
        parts.append(f"{100 * share:.1f}% of them are both better than the median original and farther than "
                     f"{tau:.3g} from every original (originals: {100 * sets['original']['new_and_better']:.1f}%).")
    beaten = [name for name, v in rivals if _level(acc, v) == "above"]
    return {"label": label, "accuracy": _level(acc, orig), "distance_ratio": ratio, "median_distance": median,
            "tau": tau, "extent": extent,
            "beats": beaten, "text": " ".join(parts)}

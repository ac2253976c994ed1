"""Linear classifiers on frozen features: the solver the probe and the probe head share.

Pooled features of a frozen backbone at a view size, a multinomial logistic regression solved by L-BFGS with
its L2 strength chosen on held-out features, and the probe head: a run's classifier started from that
regression (``train.head_init: probe``). ``lookcloser.probe`` builds the command and the run's statement on
these.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn.functional as F

from ..errors import LookcloserError

STRENGTHS = (1.0, 3e-1, 1e-1, 3e-2, 1e-2, 3e-3, 1e-3, 3e-4, 1e-4)
"""L2 strengths tried, strongest first (a tie goes to the stronger one)."""


@torch.no_grad()
def extract_features(backbone, dataset, view_size: int, device: torch.device, *, batch_size: int = 64,
                     workers: int = 2, progress: bool = True, desc: str = "features"):
    """Globally averaged features of every readable image of ``dataset`` at ``view_size``.

    Returns:
        ``(features N×C float32, labels N, indices N of the images read, skipped paths)``.
    """
    from tqdm import tqdm

    from ..data import Indexed
    from .evaluate import make_loader
    from ..models.base import resize_view

    backbone.eval().to(device)
    loader = make_loader(Indexed(dataset), batch_size, workers, pin=device.type == "cuda")
    feats, labels, kept, skipped = [], [], [], []
    bar = tqdm(total=len(dataset), desc=desc, unit="img", disable=not progress, dynamic_ncols=True)
    for images, y, bad, extras in loader:
        skipped += bad
        bar.update(len(y) + len(bad))
        if len(y) == 0:
            continue
        x = resize_view(images.to(device), view_size).contiguous(memory_format=torch.channels_last)
        feats.append(backbone(x).float().mean((2, 3)).cpu())
        labels.append(y)
        kept.append(extras["index"])
    bar.close()
    if not feats:
        raise LookcloserError(f"no image of {dataset.name} could be read ({len(skipped)} unreadable); check the data")
    return torch.cat(feats), torch.cat(labels), torch.cat(kept), skipped


def fit_logistic(x: torch.Tensor, y: torch.Tensor, num_classes: int, strength: float, *,
                 init: tuple[torch.Tensor, torch.Tensor] | None = None,
                 max_iter: int = 300) -> tuple[torch.Tensor, torch.Tensor]:
    """Multinomial logistic regression, minimizing mean cross-entropy + ``strength``/2 · ‖W‖² by L-BFGS.

    Args:
        x: N×C features (standardize them first: the strength is per unit of feature variance).
        y: N labels.
        strength: the L2 strength on the weights (not the bias).
        init: ``(W K×C, b K)`` to start from (a warm start along a path of strengths).

    Returns:
        ``(W K×C, b K)``.
    """
    x = x.double()
    w = torch.zeros(num_classes, x.shape[1], dtype=torch.float64) if init is None else init[0].double().clone()
    b = torch.zeros(num_classes, dtype=torch.float64) if init is None else init[1].double().clone()
    w.requires_grad_(True)
    b.requires_grad_(True)
    opt = torch.optim.LBFGS([w, b], lr=1, max_iter=max_iter, history_size=20, tolerance_grad=1e-7,
                            tolerance_change=1e-10, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(x @ w.T + b, y) + 0.5 * strength * (w * w).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    return w.detach().float(), b.detach().float()


def top1(x: torch.Tensor, y: torch.Tensor, wb: tuple[torch.Tensor, torch.Tensor]) -> float:
    return 100.0 * ((x @ wb[0].T + wb[1]).argmax(1) == y).float().mean().item()


def choose_strength(x_fit, y_fit, x_held, y_held, num_classes: int, strengths: Sequence[float] = STRENGTHS):
    """The L2 strength with the best top-1 on the held-out features (ties: the stronger).

    Returns:
        ``(strength, {strength: held-out top-1})``.
    """
    scores: dict[float, float] = {}
    wb = None
    for s in sorted(strengths, reverse=True):  # strongest first, each solve warm-starting the next
        wb = fit_logistic(x_fit, y_fit, num_classes, s, init=wb)
        scores[s] = top1(x_held, y_held, wb)
    best = max(scores.values())
    return max(s for s, v in scores.items() if v == best), scores


def _standardize(train: torch.Tensor, *others: torch.Tensor):
    mu, sd = train.mean(0), train.std(0).clamp_min(1e-6)
    return (mu, sd), [(t - mu) / sd for t in (train, *others)]


def fit_on_a_tenth(x: torch.Tensor, y: torch.Tensor, num_classes: int):
    """A run's own probe: the strength chosen on a tenth of each class of ``x`` (seed 1), then the regression
    refitted on all of ``x``, standardized.

    Returns:
        ``(strength, {strength: top-1 on the tenth}, (mean, std) of x, (W, b) on the standardized features)``.
    """
    from ..data import holdout_indices

    inner = torch.zeros(len(y), dtype=torch.bool)
    inner[holdout_indices(y.tolist(), 0.1, seed=1)] = True  # the strength's own held-out share
    _, (xf, xh) = _standardize(x[~inner], x[inner])
    strength, scores = choose_strength(xf, y[~inner], xh, y[inner], num_classes)
    (mu, sd), (xs,) = _standardize(x)
    return strength, scores, (mu, sd), fit_logistic(xs, y, num_classes, strength)


def probe_head(model, data: str, holdout: float, preprocess: dict[str, Any], view: int, device: torch.device, *,
               batch_size: int = 64, workers: int = 2, progress: bool = False) -> dict[str, Any]:
    """Start ``model.classifier`` (a linear layer on the pooled backbone features) from the linear probe of the
    frozen ``model.backbone``: the run's training images (``holdout`` of them kept out, as the run keeps them)
    at the evaluation preprocessing and ``view`` px, a logistic regression whose strength is chosen on a tenth
    of them, then refitted on all and folded onto the raw features (linear probing, then fine-tuning).

    Returns:
        ``{"strength", "strength_top1" (on the tenth it was chosen on), "train_top1", "images"}``.
    """
    from ..data import eval_transform, open_dataset

    train = open_dataset(data, "train", eval_transform(preprocess), holdout=holdout)
    k = model.classifier.out_features
    if len(train.classes) != k:
        raise LookcloserError(f"the training split of {data} has {len(train.classes)} classes and the classifier {k}; "
                              "check the data")
    x, y, _, _ = extract_features(model.backbone, train, view, device, batch_size=batch_size, workers=workers,
                                  progress=progress, desc="training features for the probe head")
    strength, scores, (mu, sd), (w, b) = fit_on_a_tenth(x, y, k)
    with torch.no_grad():
        layer = model.classifier
        layer.weight.copy_((w / sd).to(layer.weight))
        layer.bias.copy_((b - (mu / sd) @ w.T).to(layer.bias))
    return {"strength": strength, "strength_top1": scores[strength], "train_top1": top1((x - mu) / sd, y, (w, b)),
            "images": int(len(y))}

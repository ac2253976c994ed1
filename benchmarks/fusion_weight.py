"""Choose RRA's test-time fusion weight on held-out training images, not on the test set.

    lookcloser train ... --method rra --holdout 0.1 --out RUN      # a run that held out 10 % of its training images
    python benchmarks/fusion_weight.py RUN [--weights 0,0.1,...,1] [--limit N]

RRA predicts ``global + w·local`` (its ``fusion_weight`` w, 1 in the official code). When the local stream is
weak at a given budget a smaller w can help, but choosing w by the test accuracy would be tuning on the test
set. This script scores the run's two streams once on its ``holdout`` split and once on ``test``, fuses them
with the model's own rule (``RRA.fuse``, logits or probabilities as the run was trained) at every weight,
picks the weight with the best held-out top-1 (the smallest such weight on a tie), and reports the test top-1
at that weight beside the test top-1 at the run's own weight. Writes ``fusion_weight.json`` in the run
folder and prints a table.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch


def fused(model, glance: torch.Tensor, zoom: torch.Tensor, weight: float) -> torch.Tensor:
    """RRA's prediction from its two streams' logits with the local stream at ``weight`` (its own ``fuse``)."""
    saved = model.fusion_weight
    model.fusion_weight = weight
    try:
        return model.fuse(glance, zoom)
    finally:
        model.fusion_weight = saved


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Top-1 in %."""
    return 100.0 * float((logits.argmax(1) == labels).float().mean())


def choose(model, holdout: tuple, test: tuple, weights: list[float], default: float) -> dict:
    """Held-out and test top-1 at every weight; the weight chosen on the held-out images; the test top-1 at
    that weight and at ``default``. ``holdout`` and ``test`` are ``(global logits, local logits, labels)``."""
    def top1(streams, w):
        glance, zoom, labels = streams
        return accuracy(fused(model, glance, zoom, w), labels)

    rows = [{"weight": w, "holdout_top1": top1(holdout, w), "test_top1": top1(test, w)} for w in weights]
    best = max(rows, key=lambda r: (r["holdout_top1"], -r["weight"]))
    return {"rows": rows, "chosen_weight": best["weight"], "test_top1_chosen": best["test_top1"],
            "default_weight": default, "test_top1_default": top1(test, default),
            "holdout_images": len(holdout[2]), "test_images": len(test[2])}


def streams(model, dataset, limit: int, batch_size: int = 32) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Global and local logits and the labels of the first ``limit`` images of ``dataset``, in eval mode."""
    from lookcloser.engine.evaluate import make_loader

    loader = make_loader(torch.utils.data.Subset(dataset, range(min(limit, len(dataset)))), batch_size, 2)
    glance, zoom, labels = [], [], []
    model.eval()
    with torch.no_grad():
        for images, y, *_ in loader:
            out = model(images)
            glance.append(out.global_logits.float())
            zoom.append(out.local_logits.float())
            labels.append(y)
    return torch.cat(glance), torch.cat(zoom), torch.cat(labels)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("run")
    p.add_argument("--weights", default=",".join(f"{w / 10:g}" for w in range(11)))
    p.add_argument("--limit", type=int, default=100_000, help="images per split (the first ones)")
    a = p.parse_args()
    from lookcloser.data import HOLDOUT, eval_transform, open_dataset
    from lookcloser.engine.checkpoint import load_checkpoint
    from lookcloser.errors import LookcloserError

    model, ckpt = load_checkpoint(a.run)
    if ckpt["method"] != "rra":
        raise LookcloserError(f"{a.run} is a {ckpt['method']} run; the fusion weight is RRA's (fusion_weight)")
    data = ckpt["config"]["data"]
    if not data.get("holdout", 0.0) > 0:
        raise LookcloserError(f"{a.run} was trained on its whole training split; train it with --holdout (e.g. 0.1) "
                              "so that the weight can be chosen on images it did not train on")
    pre = ckpt["preprocess"]
    sets = {split: open_dataset(data["data"], split, eval_transform(pre), holdout=data["holdout"])
            for split in (HOLDOUT, "test")}
    held, test = (streams(model, sets[s], a.limit) for s in (HOLDOUT, "test"))
    default = model.fusion_weight
    result = choose(model, held, test, [float(w) for w in a.weights.split(",")], default)
    result |= {"run": str(a.run), "method": ckpt["method"],
               "glance_alone": {"holdout": accuracy(held[0], held[2]), "test": accuracy(test[0], test[2])},
               "zoom_alone": {"holdout": accuracy(held[1], held[2]), "test": accuracy(test[1], test[2])}}
    (Path(a.run) / "fusion_weight.json").write_text(json.dumps(result, indent=2))
    print(f"{a.run} ({ckpt['method']}): glance alone {result['glance_alone']['test']:.2f} % and zoom alone "
          f"{result['zoom_alone']['test']:.2f} % on test ({result['test_images']} images); held out "
          f"{result['holdout_images']} images")
    print("| zoom weight | held-out top-1 (%) | test top-1 (%) |\n|---|---|---|")
    for r in result["rows"]:
        print(f"| {r['weight']:g} | {r['holdout_top1']:.2f} | {r['test_top1']:.2f} |")
    print(f"chosen on the held-out images: {result['chosen_weight']:g} -> test {result['test_top1_chosen']:.2f} %; "
          f"default {default:g} -> test {result['test_top1_default']:.2f} %")


if __name__ == "__main__":
    main()

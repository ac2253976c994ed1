"""RRA's local stream measured apart: how fast its head learns, and what it reads where its patch lands.

    python benchmarks/rra_local_stream.py heads ../data/cub100-scenes [--source 448 --box 0.32 --train 1200 --epochs 6 --seeds 3]
    python benchmarks/rra_local_stream.py streams RUN [RUN ...] [--split holdout] [--limit N]

``heads``: the patch of side ``--box`` × the source centred on each image's object box (the bird; a data set
with boxes: CUB's ``bounding_boxes.txt``, the scenes) is read by the frozen pretrained backbone at
``--patch`` px and pooled, as RRA's local stream reads its patch; on those features alone, heads train from
the same start with the same optimizer (AdamW, ``--lr``, weight decay 0.01, batches of 32): a linear
classifier, RRA's local head as the method builds it (a stacked LSTM unrolled over T steps of the same
embedding, attention over the steps, a linear classifier; T, layers and width RRA's defaults) and the same
head with one layer or one step. Each is scored after every epoch on the held-out tenth of the training
images (never the test split); medians over ``--seeds`` go to ``OUT/heads.md`` and ``heads.json``. The
features are kept in ``OUT`` and read again by a later call with the same settings.

``streams``: for trained RRA runs (a data set with object boxes), on the run's held-out images by default:
the top-1 of its global stream alone, of its local stream on its own patch (the best proposal, as at
evaluation) and on a patch of the same side centred on the object box, and of the fused prediction with
each; the mean IoU of its patch with the box and the share of images with any proposal overlapping the box
by more than 0.3. It tells whether a weak local stream is a matter of where its patch lands or of what the
stream learned. Writes ``rra_streams-SPLIT.json`` in each run folder and prints one line per run.
"""

from __future__ import annotations

import argparse
import inspect
import json
import statistics
from pathlib import Path

import torch
from torch import nn

ON_OBJECT_IOU = 0.3  # a proposal "lands on the object" above this IoU with its box


def centred_patches(object_boxes: torch.Tensor, side: float, height: int, width: int) -> torch.Tensor:
    """Squares of ``side`` pixels centred on each object box, shifted (not shrunk) to lie inside the image, as
    RRA's proposals are placed: B×4 ``[x0, y0, x1, y1]``."""
    from lookcloser.layers.proposals import _boxes_around

    cx = (object_boxes[:, 0] + object_boxes[:, 2]) / 2
    cy = (object_boxes[:, 1] + object_boxes[:, 3]) / 2
    return _boxes_around(cy, cx, side, side, height, width)


def boxed(data: str, split: str, pre: dict, holdout: float):
    """One split of a data set whose samples carry their object box on the view (``object_box``)."""
    from lookcloser.data import eval_transform, open_dataset
    from lookcloser.errors import LookcloserError
    from lookcloser.report import with_object_boxes

    ds = open_dataset(data, split, eval_transform(pre), holdout=holdout)
    if not with_object_boxes(ds, pre):
        raise LookcloserError(f"{data} has no object box for every image; this needs a data set with boxes "
                              "(CUB's bounding_boxes.txt, or a set built by `lookcloser data scenes`)")
    return ds


# ---- heads ------------------------------------------------------------------------------------------------
class LocalHead(nn.Module):
    """RRA's local head on a pooled patch embedding: LSTM over ``steps`` copies, attention over the steps, a
    linear classifier initialised as the method's (normal, std 0.01)."""

    def __init__(self, dim: int, num_classes: int, steps: int, layers: int, hidden: int):
        super().__init__()
        from lookcloser.models.rra import TimeAttention

        self.steps = steps
        self.lstm = nn.LSTM(dim, hidden, layers, batch_first=True)
        self.time_attention = TimeAttention(hidden)
        self.classifier = nn.Linear(hidden, num_classes)
        nn.init.normal_(self.classifier.weight, 0, 0.01)
        nn.init.zeros_(self.classifier.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.lstm(x.unsqueeze(1).expand(-1, self.steps, -1))
        return self.classifier(self.time_attention(out)[0])


def linear_head(dim: int, num_classes: int) -> nn.Module:
    fc = nn.Linear(dim, num_classes)
    nn.init.normal_(fc.weight, 0, 0.01)
    nn.init.zeros_(fc.bias)
    return fc


def head_arms(dim: int, num_classes: int) -> dict:
    """The heads compared: name → a function building one."""
    from lookcloser.models.rra import RRA

    d = {k: v.default for k, v in inspect.signature(RRA.__init__).parameters.items()}
    t, n, h = d["steps"], d["lstm_layers"], d["hidden_size"]
    return {"linear": lambda: linear_head(dim, num_classes),
            f"RRA's local head (LSTM, {n} layers, T = {t})": lambda: LocalHead(dim, num_classes, t, n, h),
            f"LSTM, 1 layer, T = {t}": lambda: LocalHead(dim, num_classes, t, 1, h),
            f"LSTM, {n} layers, T = 1": lambda: LocalHead(dim, num_classes, 1, n, h),
            "LSTM, 1 layer, T = 1": lambda: LocalHead(dim, num_classes, 1, 1, h)}


def train_head(make, train: tuple, held: tuple, *, epochs: int, lr: float, seed: int,
               batch_size: int = 32) -> list[dict]:
    """Train one head on features; per epoch its mean training cross-entropy and its held-out top-1 (%)."""
    torch.manual_seed(seed)
    head = make()
    opt = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=0.01)
    (x, y), (hx, hy) = train, held
    rows = []
    for _ in range(epochs):
        head.train()
        total = 0.0
        for idx in torch.randperm(len(x)).split(batch_size):
            loss = nn.functional.cross_entropy(head(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
        head.eval()
        with torch.no_grad():
            top1 = (head(hx).argmax(1) == hy).float().mean().item() * 100
        rows.append({"train_ce": total / len(x), "holdout_top1": top1})
    return rows


@torch.no_grad()
def patch_features(bb, ds, box: float, patch: int, limit: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Pooled features of the object-centred patch of (a seeded draw of ``limit``) images of ``ds``."""
    from tqdm import tqdm

    from lookcloser.data import collate
    from lookcloser.layers.proposals import crop_patches

    idx = torch.randperm(len(ds), generator=torch.Generator().manual_seed(seed))[:limit].sort().values.tolist()
    loader = torch.utils.data.DataLoader(torch.utils.data.Subset(ds, idx), batch_size=32, num_workers=2,
                                         collate_fn=collate)
    feats, labels = [], []
    for images, y, _, extras in tqdm(loader, desc=f"features of {len(idx)} patches", unit="batch"):
        h, w = images.shape[-2:]
        crops = crop_patches(images, centred_patches(extras["object_box"].float(), box * min(h, w), h, w), patch)
        feats.append(bb(crops).mean((2, 3)).float())
        labels.append(y)
    return torch.cat(feats), torch.cat(labels)


def heads(a) -> None:
    from lookcloser.backbones import Backbone
    from lookcloser.benchmark import environment
    from lookcloser.data import HOLDOUT

    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    key = f"features-{a.backbone}-{a.source}-box{a.box:g}-{a.patch}-n{a.train}.pt"
    if (out / key).exists():
        train, held = torch.load(out / key, weights_only=True)
    else:
        bb = Backbone(a.backbone, pretrained=True).eval()
        pre = {"image_size": a.source, "resize_ratio": 1.0, "mean": list(bb.mean), "std": list(bb.std)}
        train = patch_features(bb, boxed(a.data, "train", pre, 0.1), a.box, a.patch, a.train, 0)
        held = patch_features(bb, boxed(a.data, HOLDOUT, pre, 0.1), a.box, a.patch, 10**9, 0)
        torch.save((train, held), out / key)
    classes = int(max(train[1].max(), held[1].max())) + 1
    arms = head_arms(train[0].shape[1], classes)
    result = {"data": a.data, "backbone": a.backbone, "source": a.source, "box": a.box, "patch": a.patch,
              "train_images": len(train[1]), "holdout_images": len(held[1]), "epochs": a.epochs, "lr": a.lr,
              "seeds": a.seeds, "steps_per_epoch": -(-len(train[1]) // 32), "environment": environment(), "heads": {}}
    for name, make in arms.items():
        runs = [train_head(make, train, held, epochs=a.epochs, lr=a.lr, seed=s) for s in range(a.seeds)]
        result["heads"][name] = {
            "holdout_top1": [statistics.median(r[e]["holdout_top1"] for r in runs) for e in range(a.epochs)],
            "train_ce": [statistics.median(r[e]["train_ce"] for r in runs) for e in range(a.epochs)], "runs": runs}
        print(f"{name}: held-out top-1 by epoch " + " ".join(f"{v:.1f}" for v in result["heads"][name]["holdout_top1"]),
              flush=True)
    (out / "heads.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "heads.md").write_text(heads_markdown(result))
    print(f"wrote {out / 'heads.md'}")


def heads_markdown(r: dict) -> str:
    env = r["environment"]
    epochs = range(1, r["epochs"] + 1)
    lines = [f"RRA's local head against a linear one on the same frozen features: {r['backbone']} (pretrained) "
             f"pooled over a {r['patch']} px read of the patch of side {r['box']:g} × the {r['source']} px source "
             f"centred on each object box of `{r['data']}`; {r['train_images']} training images "
             f"({r['steps_per_epoch']} steps an epoch), scored on the {r['holdout_images']} held-out ones; AdamW "
             f"{r['lr']:g}, median of {r['seeds']} seeds.", "",
             "| head | " + " | ".join(f"held-out top-1 after epoch {e} (%)" for e in epochs) + " | training CE at the end |",
             "|---" * (r["epochs"] + 2) + "|"]
    for name, h in r["heads"].items():
        lines.append(f"| {name} | " + " | ".join(f"{v:.1f}" for v in h["holdout_top1"]) + f" | {h['train_ce'][-1]:.2f} |")
    lines += ["", f"Device {env['device']}; torch {env['torch']}, timm {env['timm']}, commit {env['commit']}, {env['date']} UTC.",
              "Command: `python benchmarks/rra_local_stream.py heads "
              f"{r['data']} --source {r['source']} --box {r['box']:g} --patch {r['patch']} --train {r['train_images']} "
              f"--epochs {r['epochs']} --seeds {r['seeds']} --lr {r['lr']:g}`", ""]
    return "\n".join(lines)


# ---- streams ----------------------------------------------------------------------------------------------
@torch.no_grad()
def stream_scores(model, loader) -> dict:
    """What a trained RRA reads with its own patch and with one on the object (see the module's docstring)."""
    from lookcloser.layers.proposals import box_iou

    model.eval()
    hits = {"global alone": 0, "local alone, its patch": 0, "fused, its patch": 0,
            "local alone, patch on the object": 0, "fused, patch on the object": 0}
    iou, on_object, n = 0.0, 0, 0
    for images, y, _, extras in loader:
        obj = extras["object_box"].float()
        h, w = images.shape[-2:]
        glance = model.look(images)
        cand, _, valid = model._candidates(images, glance.attention, None)
        own = cand[:, 0]
        centred = centred_patches(obj, model.box_size * min(h, w), h, w)
        local_own = model._local(images, own)[0]
        local_obj = model._local(images, centred)[0]
        preds = {"global alone": glance.logits, "local alone, its patch": local_own,
                 "fused, its patch": model.fuse(glance.logits, local_own),
                 "local alone, patch on the object": local_obj,
                 "fused, patch on the object": model.fuse(glance.logits, local_obj)}
        for k, logits in preds.items():
            hits[k] += int((logits.argmax(1) == y).sum())
        iou += float(box_iou(own, obj).sum())
        on_object += int(((box_iou(cand, obj[:, None]) > ON_OBJECT_IOU) & valid).any(1).sum())
        n += len(y)
    return {"images": n, "top1": {k: 100 * v / n for k, v in hits.items()}, "patch_iou": 100 * iou / n,
            "any_proposal_on_object": 100 * on_object / n}


def streams(a) -> None:
    from lookcloser.data import collate
    from lookcloser.engine.checkpoint import load_checkpoint
    from lookcloser.errors import LookcloserError

    for run in a.runs:
        model, ckpt = load_checkpoint(run)
        if ckpt["method"] != "rra":
            raise LookcloserError(f"{run} is a {ckpt['method']} run; this measures RRA's local stream")
        data = ckpt["config"]["data"]
        ds = boxed(data["data"], a.split, ckpt["preprocess"], data.get("holdout", 0.0))
        sub = torch.utils.data.Subset(ds, range(min(a.limit, len(ds))))
        loader = torch.utils.data.DataLoader(sub, batch_size=32, num_workers=2, collate_fn=collate)
        result = {"run": str(run), "split": a.split, "box_size": model.box_size,
                  "num_proposals": model.num_proposals} | stream_scores(model, loader)
        Path(run, f"rra_streams-{a.split}.json").write_text(json.dumps(result, indent=2) + "\n")
        print(f"{run} ({a.split}, {result['images']} images, patch side {model.box_size:g}): "
              + ", ".join(f"{k} {v:.2f} %" for k, v in result["top1"].items())
              + f"; its patch's IoU with the box {result['patch_iou']:.1f} %, a proposal on the object in "
                f"{result['any_proposal_on_object']:.1f} % of images")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    h = sub.add_parser("heads", help="RRA's local head against a linear one on frozen patch features")
    h.add_argument("data", help="a data set with object boxes (cub:PATH, a scenes folder)")
    h.add_argument("--backbone", default="efficientnet_lite0")
    h.add_argument("--source", type=int, default=448, help="the source image's side")
    h.add_argument("--box", type=float, default=0.32, help="the patch's side as a share of the source's (RRA's box_size)")
    h.add_argument("--patch", type=int, default=224, help="the side the patch is read at (RRA's patch_size)")
    h.add_argument("--train", type=int, default=1200, help="training images (a seeded draw)")
    h.add_argument("--epochs", type=int, default=6)
    h.add_argument("--seeds", type=int, default=3)
    h.add_argument("--lr", type=float, default=3e-3, help="the heads-first rate of the benchmark recipes")
    h.add_argument("--out", default="benchmarks/results/rra-local-stream-cpu")
    s = sub.add_parser("streams", help="a trained RRA's streams with its own patch and with one on the object")
    s.add_argument("runs", nargs="+")
    s.add_argument("--split", default="holdout", help="holdout (a run trained with --holdout), test or val")
    s.add_argument("--limit", type=int, default=10**9, help="images (the first ones of the split)")
    a = p.parse_args()
    heads(a) if a.command == "heads" else streams(a)


if __name__ == "__main__":
    main()

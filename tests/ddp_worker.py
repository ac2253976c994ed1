"""Run under torchrun by tests/test_distributed.py (one process per rank).

    python -m torch.distributed.run ... tests/ddp_worker.py train OUT METHOD BATCH EPOCHS SYNC_BN [RESUME]
    python -m torch.distributed.run ... tests/ddp_worker.py eval OUT

``train`` trains the tiny synthetic set into OUT with the library's Trainer, then every rank saves its own
weights (and WS-DAN centers) as OUT/rank<r>.pt, so the test can compare the ranks with each other and with
one process. ``eval`` predicts a 9-image split with the evaluation sharded over the ranks and saves what
rank 0 gathered as OUT/eval.pt.
"""

import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.conftest import TINY_BACKBONE, tiny_config  # noqa: E402

THREADS = int(os.environ.get("TORCH_THREADS", "0"))
if THREADS:
    torch.set_num_threads(THREADS)
DATA = "synth:classes=3,train=16,test=3,size=40"


def train(out, method, batch, epochs, sync_bn, resume=False):
    import time

    from lookcloser.engine.trainer import Trainer

    cfg = tiny_config(epochs=int(epochs), sync_bn=sync_bn == "1", eval_every=0, lr=float(os.environ.get("LR", "0.005")))
    cfg.data.data = DATA
    cfg.data.batch_size = int(batch)
    cfg.model.method = method
    if method == "wsdan":
        cfg.model.options = {"output_stride": 16, "num_maps": 4}
    cfg.train.checkpoint_minutes = float(os.environ.get("CHECKPOINT_MINUTES", "30"))
    # SLOW_STEPS gives a test time to kill a process in the middle of an epoch
    delay = float(os.environ.get("SLOW_STEPS", "0"))
    hook = (lambda epoch, step: time.sleep(delay)) if delay else None
    trainer = Trainer(cfg, out, resume=resume == "resume", progress=False, step_hook=hook)
    trainer.fit()
    rank = int(os.environ.get("RANK", "0"))
    torch.save(trainer.model.state_dict(), Path(out) / f"rank{rank}.pt")


def evaluate(out):
    from lookcloser.data import build_transform, open_dataset
    from lookcloser.engine import distributed as D
    from lookcloser.engine.evaluate import predict_dataset
    from lookcloser.models import create_model

    info = D.setup("cpu")
    torch.manual_seed(0)
    model = create_model("baseline", backbone=TINY_BACKBONE, num_classes=3).eval()
    ds = open_dataset(DATA, "test", build_transform(False, 32, model.mean, model.std))
    probs, labels, bad = predict_dataset(model, ds, torch.device("cpu"), batch_size=2, workers=0, progress=False,
                                         dist=info)
    if info.is_main:
        torch.save({"probs": probs, "labels": labels, "skipped": [str(b) for b in bad]}, Path(out) / "eval.pt")
    D.cleanup(info)


def stream(root, out, workers):
    """Read every position of a shard set's train split for epochs 0 and 1 as this rank sees it (loader workers
    included) and save them as OUT/stream<rank>.pt."""
    from lookcloser.data.shards import ShardStream
    from lookcloser.engine import distributed as D

    info = D.setup("cpu")
    ds = ShardStream(root, "train")
    ds.with_position = True
    seen = {}
    for epoch in (0, 1):
        ds.set_epoch(0, epoch)
        loader = torch.utils.data.DataLoader(ds, batch_size=3, num_workers=int(workers), collate_fn=lambda b: b)
        seen[epoch] = [int(item[2]["position"]) for batch in loader for item in batch]
    torch.save(seen, Path(out) / f"stream{info.rank}.pt")
    D.cleanup(info)


if __name__ == "__main__":
    {"train": train, "eval": evaluate, "stream": stream}[sys.argv[1]](*sys.argv[2:])

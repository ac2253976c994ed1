"""Writing a data set as WebDataset shards (``lookcloser data shard``); reading them is :mod:`.shards`."""

from __future__ import annotations

import io
import json
import os
import random
from pathlib import Path
from typing import Any

from ..errors import LookcloserError
from .shards import FORMAT, IMAGE_KEYS, INFO


def _stored(ds, index: int) -> tuple[bytes, str]:
    """An image's bytes as stored (a file's own bytes), or PNG for an image drawn on demand."""
    path = ds.samples[index][0]
    ext = Path(path).suffix.lower().lstrip(".")
    if ext in IMAGE_KEYS and os.path.isfile(path):
        return Path(path).read_bytes(), "jpg" if ext == "jpeg" else ext
    buf = io.BytesIO()
    ds.load(index).save(buf, format="PNG")
    return buf.getvalue(), "png"


def write_shards(spec: str, out: str | Path, *, shard_size: int = 1000, splits: list[str] | None = None,
                 seed: int = 0, progress: bool = True) -> dict[str, Any]:
    """Write ``spec``'s splits as WebDataset shards into ``out``; return ``info.json``'s content."""
    import webdataset as wds
    from tqdm import tqdm

    from ..folders import json_with, output_folder
    from . import open_dataset

    if shard_size < 1:
        raise LookcloserError(f"--shard-size must be at least 1, got {shard_size}")
    opened = {}
    for split in splits or ("train", "val", "test"):
        try:
            opened[split] = open_dataset(spec, split)
        except LookcloserError:
            if splits:  # a split asked for by name must exist
                raise
    if "train" not in opened:
        raise LookcloserError(f"{spec} has no train split to shard")
    out = output_folder(out, "data shard", recognize=lambda p: json_with(p / INFO, "format", "splits"))
    info: dict[str, Any] = {"format": FORMAT, "version": 1, "source": str(spec), "seed": seed,
                            "classes": opened["train"].classes, "splits": {}}
    for split, ds in opened.items():
        order = list(range(len(ds)))
        random.Random(f"{seed}/{split}").shuffle(order)  # every shard mixes the classes
        shards = []
        bar = tqdm(total=len(order), desc=f"shard {split}", unit="img", disable=not progress)
        with wds.ShardWriter(str(out / f"{split}-%05d.tar"), maxcount=shard_size, verbose=0) as writer:
            for position, index in enumerate(order):
                data, ext = _stored(ds, index)
                path, label = ds.samples[index]
                writer.write({"__key__": f"{position:08d}", ext: data, "cls": str(label).encode(),
                              "json": json.dumps({"position": position, "source": path}).encode()})
                if position % shard_size == 0:
                    shards.append({"url": f"{split}-{len(shards):05d}.tar", "images": 0})
                shards[-1]["images"] += 1
                bar.update(1)
        bar.close()
        info["splits"][split] = {"images": len(order), "shards": shards}
    (out / INFO).write_text(json.dumps(info, indent=1) + "\n")
    return info

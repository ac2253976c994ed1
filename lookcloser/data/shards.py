"""WebDataset shards: a data set as tar files that training streams, for sets past one disk or page cache.

``lookcloser data shard SPEC --out DIR`` (:func:`lookcloser.data.shardwriter.write_shards`) writes each split as ``SPLIT-NNNNN.tar`` shards (each image as it
is stored, its class index in ``.cls``, its position and source in ``.json``), in a seeded shuffled order so
every shard mixes the classes, and ``info.json`` with the class names and each shard's image count. A
``wds:DIR`` spec reads them (``wds:`` also takes any location the ``webdataset`` library opens for the
shards, such as a ``pipe:`` command or an fsspec URL, with ``info.json`` readable beside them).

Training streams a split (:class:`ShardStream`, through the ``webdataset`` library): every epoch the shards
are shuffled with a seed of (seed, epoch), dealt to the processes (rank) and their loader workers, and read
once, each consumer mixing its samples in a seeded shuffle buffer; each image's augmentation has its own seed
(seed, epoch, position), as a map-style set's. So every image is read exactly once per epoch across
processes. Under torchrun every process takes the same number of batches (DistributedDataParallel needs it):
the fewest images any process was dealt, cut into batches; the few images beyond that in the others wait for
the next epoch, whose deal differs. Evaluation reads a split by position (:class:`ShardIndex`: each image's
offset in its tar file, found once by reading the tar headers), which needs the shards on a file system.
"""

from __future__ import annotations

import io
import json
import os
import random
import tarfile
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from ..errors import BadImageError, LookcloserError
from .base import ImageDataset, Skipped, sample_seed, seeded, to_rgb

INFO = "info.json"
FORMAT = "lookcloser-shards"
IMAGE_KEYS = ("jpg", "jpeg", "png", "webp", "bmp", "tif", "tiff")


def read_info(root: str) -> dict[str, Any]:
    """``info.json`` of a ``wds:`` location (a folder, or anything fsspec opens)."""
    location = root.rstrip("/") + "/" + INFO
    try:
        if "://" in root:
            import fsspec

            with fsspec.open(location, "r") as f:
                info = json.load(f)
        else:
            info = json.loads(Path(location).read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise LookcloserError(f"cannot read {location} ({e}); give the folder `lookcloser data shard` wrote") from e
    if info.get("format") != FORMAT:
        raise LookcloserError(f"{location} is not a lookcloser shard index; write the shards with "
                              "`lookcloser data shard SPEC --out DIR`")
    return info


def _split_info(info: dict, split: str, root: str) -> dict:
    names = {"val": ("val", "validation")}.get(split, (split,))
    for name in names:
        if name in info["splits"]:
            return info["splits"][name]
    raise LookcloserError(f"the shards at {root} have no split {split!r}; they hold {', '.join(info['splits'])}")


def _decode(sample: dict) -> Image.Image:
    ext = next((k for k in IMAGE_KEYS if k in sample), None)
    if ext is None:
        raise OSError("no image in the sample")
    with Image.open(io.BytesIO(sample[ext])) as im:
        im.load()
        return to_rgb(im)


def _world() -> tuple[int, int]:
    """``(rank, world size)`` of this process: the process group's where one is set up, else torchrun's."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


class ShardStream(torch.utils.data.IterableDataset):
    """A split streamed from its shards (training); see the module docstring for the order and the deal.

    Args:
        root: the ``wds:`` location.
        split: the split.
        transform: applied to each RGB PIL image, seeded per sample.
        buffer: the shuffle buffer's size per consumer (0: the shards' own order).
    """

    streaming = True

    def __init__(self, root: str, split: str, transform=None, *, buffer: int = 1000):
        self.root, self.split, self.transform, self.buffer = root, split, transform, buffer
        info = read_info(root)
        self.classes = list(info["classes"])
        self.shards = _split_info(info, split, root)["shards"]
        self.name = f"wds:{root} ({split})"
        self.seed, self.epoch = 0, 0
        self.with_position = False  # each sample's position in its split, as an extra (for checks)

    def __len__(self) -> int:
        return sum(s["images"] for s in self.shards)

    def set_epoch(self, seed: int, epoch: int) -> None:
        """The seed and epoch the next pass deals, shuffles and augments with."""
        self.seed, self.epoch = seed, epoch

    def deal(self, world: int) -> list[list[dict]]:
        """This epoch's shards of each process: shuffled with (seed, epoch), then dealt largest first to the
        process with the fewest images so far. Every epoch deals the same counts (the shards' sizes are the
        same), so the batches per epoch do not change, while which shards each process reads does."""
        order = list(self.shards)
        random.Random(f"{self.seed}/{self.epoch}/shards").shuffle(order)
        order.sort(key=lambda s: -s["images"])  # stable: equal sizes stay shuffled
        hands: list[list[dict]] = [[] for _ in range(world)]
        loads = [0] * world
        for shard in order:
            r = loads.index(min(loads))
            hands[r].append(shard)
            loads[r] += shard["images"]
        return hands

    def batches(self, batch_size: int, world: int) -> int:
        """Batches every process takes this epoch: the fewest images any process was dealt, in batches."""
        return min(sum(s["images"] for s in mine) for mine in self.deal(world)) // batch_size

    def _url(self, shard: dict) -> str:
        url = shard["url"]
        return url if "://" in url or url.startswith(("pipe:", "/")) else self.root.rstrip("/") + "/" + url

    def __iter__(self):
        import webdataset as wds

        rank, world = _world()
        worker = torch.utils.data.get_worker_info()
        wid, workers = (worker.id, worker.num_workers) if worker is not None else (0, 1)
        mine = self.deal(world)[rank][wid::workers]
        samples = wds.tarfile_to_samples(handler=wds.reraise_exception)(iter({"url": self._url(s)} for s in mine))
        rng = random.Random(f"{self.seed}/{self.epoch}/{rank}/{wid}")
        pending: list[dict] = []
        for sample in samples:
            if self.buffer <= 1:
                yield self._item(sample)
                continue
            pending.append(sample)
            if len(pending) >= self.buffer:
                yield self._item(pending.pop(rng.randrange(len(pending))))
        rng.shuffle(pending)
        for sample in pending:
            yield self._item(sample)

    def _item(self, sample: dict):
        key = f"{sample.get('__url__', '')}#{sample['__key__']}"
        label = int(sample["cls"])
        position = json.loads(sample["json"])["position"] if "json" in sample else int(sample["__key__"])
        try:
            img = _decode(sample)
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
            return Skipped(key, f"cannot read image {key} ({e})")
        if self.transform is not None:
            img = seeded(self.transform, img, sample_seed(self.seed, self.epoch, position))
        return img, label, ({"position": torch.tensor(position)} if self.with_position else {})


class ShardIndex(ImageDataset):
    """A split read by position from its local shards (evaluation): each image's offset in its tar file is
    found once from the tar headers, then read directly."""

    def __init__(self, root: str, split: str, transform=None):
        info = read_info(root)
        shards = _split_info(info, split, root)["shards"]
        self.members: list[tuple[str, int, int]] = []  # (tar file, offset, size) per sample
        samples = []
        for shard in shards:
            path = str(Path(root) / shard["url"])
            entries: dict[str, dict[str, tarfile.TarInfo]] = {}
            try:
                with tarfile.open(path) as tar:
                    for member in tar:
                        key, _, ext = member.name.partition(".")
                        entries.setdefault(key, {})[ext] = member
                    for key in sorted(entries):
                        parts = entries[key]
                        label = int(tar.extractfile(parts["cls"]).read())
                        image = next((parts[k] for k in IMAGE_KEYS if k in parts), None)
                        if image is None:
                            continue
                        self.members.append((path, image.offset_data, image.size))
                        samples.append((f"{path}#{key}", label))
            except (OSError, tarfile.TarError) as e:
                raise LookcloserError(f"cannot read the shard {path} ({e}); evaluation reads shards from a file "
                                      "system (write them again, or copy them there)") from e
        super().__init__(samples, info["classes"], transform, name=f"wds:{root} ({split})")

    def load(self, index: int) -> Image.Image:
        path, offset, size = self.members[index]
        try:
            with open(path, "rb") as f:
                f.seek(offset)
                data = f.read(size)
            with Image.open(io.BytesIO(data)) as im:
                im.load()
                return to_rgb(im)
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
            raise BadImageError(f"cannot read image {self.samples[index][0]} ({e}); write the shards again") from e


def open_shards(root: str, split: str, transform=None, *, stream: bool = False):
    """A ``wds:`` split: streamed for training (``stream``), else read by position."""
    if not root:
        raise LookcloserError("wds: needs the folder the shards are in, e.g. wds:/data/cub-shards")
    return ShardStream(root, split, transform) if stream else ShardIndex(root, split, transform)


def shard_counts(root: str) -> dict[str, tuple[int, int]]:
    info = read_info(root)
    return {split: (s["images"], len(info["classes"])) for split, s in info["splits"].items()}

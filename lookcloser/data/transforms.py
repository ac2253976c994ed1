"""Image transforms for training and evaluation.

Training: resize the short side to ``image_size * resize_ratio`` (or, with ``squash``, the whole image
to that square), optional random rotation, random square crop, optional flip, colour jitter and PCA
lighting noise. Evaluation: the same resize and a center crop (or, with ``squash``, the whole image
resized to ``image_size`` × ``image_size``, so nothing at the edges of a wide image is lost), so train and
test see objects at the same scale (the usual fine-grained recipe: resize 512, crop 448).
"""

from __future__ import annotations

import torch
from torchvision import transforms as T

# principal components of ImageNet's RGB pixels (values in [0, 1]), as used by AlexNet's PCA lighting
# augmentation and by MXNet's ``pca_noise`` (which TASN's official loader sets to 0.1)
_EIGVAL = torch.tensor([0.2175, 0.0188, 0.0045])
_EIGVEC = torch.tensor([[-0.5675, 0.7192, 0.4009],
                        [-0.5808, -0.0045, -0.8140],
                        [-0.5836, -0.6948, 0.4203]])


class PCALighting:
    """Add ``eigvec · (α ⊙ eigval)`` to every pixel of a [0, 1] tensor image, α ~ N(0, std²) per image.

    Args:
        std: standard deviation of α (MXNet's ``pca_noise``; 0.1 in AlexNet and TASN's official code).
    """

    def __init__(self, std: float):
        self.std = std

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        alpha = torch.randn(3) * self.std
        rgb = _EIGVEC @ (alpha * _EIGVAL)  # 3
        return img + rgb.view(3, 1, 1)

    def __repr__(self) -> str:
        return f"PCALighting(std={self.std})"


def resize_side(image_size: int, resize_ratio: float) -> int:
    """The side images are resized to before the crop: ``image_size * resize_ratio``, at least ``image_size``."""
    return max(image_size, int(round(image_size * resize_ratio)))


def view_geometry(original_size, image_size: int, resize_ratio: float = 1.143,
                  squash: bool = False) -> tuple[int, int, int, int]:
    """Where the evaluation view (:func:`build_transform` with ``train=False``) takes an image's pixels from:
    ``(width, height)`` of the resized image and the ``(left, top)`` of the ``image_size`` crop in it, for a
    file of ``original_size`` ``(width, height)``; a view pixel x is original pixel ``(x + left) * w0 / width``."""
    w0, h0 = (int(v) for v in original_size)
    if squash:
        return image_size, image_size, 0, 0
    resize = resize_side(image_size, resize_ratio)
    # torchvision Resize(int): short side -> resize, long side truncated as torchvision does it
    w1, h1 = (resize, int(resize * h0 / w0)) if w0 <= h0 else (int(resize * w0 / h0), resize)
    return w1, h1, int(round((w1 - image_size) / 2.0)), int(round((h1 - image_size) / 2.0))


def box_in_view(box, original_size, preprocess: dict) -> tuple[float, float, float, float]:
    """An object box ``(x, y, width, height)`` in an image file's pixels, as ``[x0, y0, x1, y1]`` on the
    evaluation view that ``preprocess`` (``image_size``, ``resize_ratio``, ``squash``) describes, clamped to it."""
    size = int(preprocess["image_size"])
    w1, h1, left, top = view_geometry(original_size, size, preprocess.get("resize_ratio", 1.143),
                                      bool(preprocess.get("squash", False)))
    w0, h0 = (int(v) for v in original_size)
    x, y, w, h = (float(v) for v in box)
    sx, sy = w1 / w0, h1 / h0

    def clamp(v: float) -> float:
        return min(max(v, 0.0), float(size))

    return clamp(x * sx - left), clamp(y * sy - top), clamp((x + w) * sx - left), clamp((y + h) * sy - top)


def learned_policy(name: str, mean) -> object:
    """A PIL transform for an ``auto_augment`` setting: timm's policy for its strings (RandAugment,
    AugMix, AutoAugment), torchvision's TrivialAugmentWide for ``trivial``."""
    if name == "trivial":
        return T.TrivialAugmentWide()
    from timm.data.auto_augment import augment_and_mix_transform, auto_augment_transform, rand_augment_transform

    hparams = {"img_mean": tuple(round(255 * m) for m in mean)}
    try:
        if name.startswith("rand"):
            return rand_augment_transform(name, hparams)
        if name.startswith("augmix"):
            return augment_and_mix_transform(name, hparams)
        return auto_augment_transform(name, hparams)
    except (AssertionError, KeyError, ValueError) as e:
        from ..errors import LookcloserError

        raise LookcloserError(f"timm does not read the policy {name!r} ({e}); e.g. rand-m9-mstd0.5") from e


def build_transform(train: bool, image_size: int, mean, std, *, resize_ratio: float = 1.143, hflip: bool = True,
                    color_jitter: float = 0.0, squash: bool = False, rotation: float = 0.0,
                    pca_lighting: float = 0.0, uint8: bool = False, crop_scale: float = 1.0,
                    auto_augment: str = "", random_erasing: float = 0.0):
    """The torchvision transform for one split (PIL RGB → normalized float tensor).

    Args:
        train: random augmentation (crop, flip, ...) or the deterministic evaluation view.
        image_size: side of the square output.
        mean, std: normalization.
        resize_ratio: resize to ``image_size * resize_ratio`` before the crop.
        hflip: random horizontal flips (training).
        color_jitter: brightness/contrast/saturation jitter strength (training).
        squash: resize the whole image to a square, ignoring its aspect (WS-DAN's and RRA's official
            loaders); evaluation then resizes straight to ``image_size`` without a crop.
        rotation: random rotation of up to ± this many degrees (training; TASN's official loader: 30).
        pca_lighting: PCA lighting noise std (training; TASN's official loader: 0.1).
        uint8: end with the ``uint8`` C×H×W image (``PILToTensor``) and leave ``ToTensor``'s scaling and the
            normalization to :func:`normalize_batch` on the device: a quarter of the bytes through the loader
            and no float work in its workers. Not with ``pca_lighting`` or ``random_erasing``, which need
            float pixels (the transform then ends normalized as usual).
        crop_scale: below 1, a RandomResizedCrop (area share ``crop_scale`` to 1) replaces the random crop.
        auto_augment: a learned policy after the crop (:func:`learned_policy`).
        random_erasing: probability of timm's RandomErasing (per-pixel noise), on the normalized tensor.
    """
    bilinear = T.InterpolationMode.BILINEAR
    side = resize_side(image_size, resize_ratio)
    if squash:
        steps = [T.Resize((side, side) if train else (image_size, image_size), interpolation=bilinear,
                          antialias=True)]
    else:
        steps = [T.Resize(side, interpolation=bilinear, antialias=True)]
    if train:
        if rotation > 0:
            steps.append(T.RandomRotation(rotation, interpolation=bilinear))
        if crop_scale < 1:
            steps.append(T.RandomResizedCrop(image_size, scale=(crop_scale, 1.0), interpolation=bilinear,
                                             antialias=True))
        else:
            steps.append(T.RandomCrop(image_size))
        if hflip:
            steps.append(T.RandomHorizontalFlip())
        if color_jitter > 0:
            steps.append(T.ColorJitter(color_jitter, color_jitter, color_jitter))
        if auto_augment:
            steps.append(learned_policy(auto_augment, mean))
    elif not squash:
        steps.append(T.CenterCrop(image_size))
    floats_needed = train and (pca_lighting > 0 or random_erasing > 0)
    if uint8 and not floats_needed:
        steps.append(T.PILToTensor())
        return T.Compose(steps)
    steps.append(T.ToTensor())
    if train and pca_lighting > 0:
        steps.append(PCALighting(pca_lighting))
    steps.append(T.Normalize(mean, std))
    if train and random_erasing > 0:
        from timm.data.random_erasing import RandomErasing

        steps.append(RandomErasing(random_erasing, mode="pixel", device="cpu"))
    return T.Compose(steps)


def normalize_batch(images: torch.Tensor, mean, std) -> torch.Tensor:
    """A batch of ``uint8`` images (from a ``uint8`` transform) as the float transform would have made it:
    scaled to [0, 1], then normalized per channel with the same operations in the same order (bit-identical
    on the CPU). A float batch (already normalized) is returned as it is."""
    if images.dtype != torch.uint8:
        return images
    x = images.to(torch.float32).div_(255)
    m = torch.as_tensor(mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    s = torch.as_tensor(std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    return x.sub_(m).div_(s)


def eval_transform(preprocess: dict):
    """The evaluation transform a checkpoint's ``preprocess`` entry describes."""
    return build_transform(False, preprocess["image_size"], preprocess["mean"], preprocess["std"],
                           resize_ratio=preprocess["resize_ratio"], squash=preprocess.get("squash", False))

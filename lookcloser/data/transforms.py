"""Image transforms for training and evaluation.

Training: resize the short side to ``image_size * resize_ratio``, random square crop, optional flip
and colour jitter. Evaluation: the same resize and a center crop, so train and test see objects at the
same scale (the usual fine-grained recipe: resize 512, crop 448).
"""

from __future__ import annotations

from torchvision import transforms as T


def build_transform(train: bool, image_size: int, mean, std, *, resize_ratio: float = 1.143, hflip: bool = True,
                    color_jitter: float = 0.0):
    """The torchvision transform for one split (PIL RGB → normalized float tensor)."""
    resize = max(image_size, int(round(image_size * resize_ratio)))
    steps = [T.Resize(resize, interpolation=T.InterpolationMode.BILINEAR, antialias=True)]
    if train:
        steps.append(T.RandomCrop(image_size))
        if hflip:
            steps.append(T.RandomHorizontalFlip())
        if color_jitter > 0:
            steps.append(T.ColorJitter(color_jitter, color_jitter, color_jitter))
    else:
        steps.append(T.CenterCrop(image_size))
    steps += [T.ToTensor(), T.Normalize(mean, std)]
    return T.Compose(steps)

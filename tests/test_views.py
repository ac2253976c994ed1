"""Views: each method's glance is a downsized view of the source, its zooms read the full-resolution source.

The source is a checkerboard of 2-pixel squares: any view downsized 4× averages it to flat grey, while a
zoom read from the source at magnification ≥ 1/2 keeps its contrast. So a zoom that reads the glance
instead of the source loses (almost) all its standard deviation, and these tests fail.
"""

import pytest
import torch
import torch.nn.functional as F

from lookcloser.models import create_model
from lookcloser.models.base import resize_view
from tests.conftest import TINY_BACKBONE

SOURCE, VIEW, ZOOM = 64, 16, 32
OPTIONS = {
    "baseline": dict(view_size=VIEW),
    "tasn": dict(view_size=VIEW, sample_size=ZOOM, att_channels=8),
    "wsdan": dict(view_size=VIEW, crop_size=ZOOM, output_stride=16, num_maps=4),
    "wsban": dict(view_size=VIEW, crop_size=ZOOM, output_stride=16, num_maps=4),
    "rra": dict(view_size=VIEW, patch_size=ZOOM, steps=2, hidden_size=8, lstm_layers=1),
}


def _checkerboard(b=2):
    y, x = torch.meshgrid(torch.arange(SOURCE), torch.arange(SOURCE), indexing="ij")
    board = ((y // 2 + x // 2) % 2).float()  # squares of 2 px
    return board.expand(b, 3, SOURCE, SOURCE).clone()


def _zoom(out, method):
    return {"tasn": lambda: out.structure_images, "wsdan": lambda: out.crop_images,
            "wsban": lambda: out.crop_images, "rra": lambda: out.patches}[method]()


def test_the_glance_of_a_fine_pattern_is_flat():
    glance = resize_view(_checkerboard(), VIEW)
    assert glance.shape[-1] == VIEW and glance.std() < 0.02


@pytest.mark.parametrize("method", ["tasn", "wsdan", "wsban", "rra"])
@pytest.mark.parametrize("train", [True, False])
def test_zooms_read_the_full_resolution_source(method, train):
    torch.manual_seed(0)
    model = create_model(method, backbone=TINY_BACKBONE, num_classes=3, **OPTIONS[method]).train(train)
    source = _checkerboard()
    with torch.no_grad():
        zoom = _zoom(model(source, torch.tensor([0, 1]) if train else None), method)
        # the same model fed the glance blown up to the source size: its zoom can only hold the glance's detail
        blurred = F.interpolate(resize_view(source, VIEW), size=(SOURCE, SOURCE), mode="bilinear",
                                align_corners=False)
        torch.manual_seed(0)
        from_glance = _zoom(model(blurred, torch.tensor([0, 1]) if train else None), method)
    assert zoom.shape[-2:] == (ZOOM, ZOOM)
    assert zoom.std() > 0.25, zoom.std()  # at least half the board's full contrast (0.5), whatever its phase
    assert from_glance.std() < 0.1, from_glance.std()


@pytest.mark.parametrize("method", list(OPTIONS))
def test_the_glance_is_what_the_first_backbone_pass_sees(method):
    torch.manual_seed(0)
    model = create_model(method, backbone=TINY_BACKBONE, num_classes=3, **OPTIONS[method]).eval()
    seen = []
    first = model.attention_backbone if method == "tasn" else model.backbone
    handle = first.register_forward_pre_hook(lambda mod, args: seen.append(args[0].shape[-1]))
    with torch.no_grad():
        model(torch.randn(2, 3, SOURCE, SOURCE))
    handle.remove()
    assert seen[0] == VIEW


def test_view_size_zero_keeps_the_source_and_bad_sizes_are_refused():
    from lookcloser.errors import LookcloserError

    x = torch.randn(1, 3, 40, 40)
    assert resize_view(x, 0) is x and resize_view(x, 40) is x
    with pytest.raises(LookcloserError, match="view_size"):
        create_model("baseline", backbone=TINY_BACKBONE, num_classes=3, view_size=8)

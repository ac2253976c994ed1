"""The default sampler against a port of the official operator's grid construction.

``_operator_axis`` is a line-by-line port (in plain Python loops) of the forward pass of the official
``AttSampler`` operator (researchmm/tasn, ``src/operator/contrib/att_sampler-inl.h``, CPU path): the
coupled density cap over ``iters`` rounds, the cumulative map that starts at 1, the walk that inverts it
at the quantiles i·step and the ``align_corners=True`` normalization. The maps are upsampled with
``align_corners=True`` (MXNet's ``BilinearResize2D``) and reduced to their per-axis maxima normalized to
sum 1, as the official ``att_sample`` symbol does before calling the operator.
"""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lookcloser.layers.sampler import attention_sample
from lookcloser.layers.trilinear import trilinear_attention


def _operator(mapx, mapy, out_size, dense=4.0, iters=5):
    """Port of the operator for one image: mapx (rows' profile → y coordinates) and mapy (columns' profile
    → x coordinates), each summing to 1 over att_size pixels. Returns (index_x, index_y) in [-1, 1]."""
    att_size = len(mapx)
    in_size = att_size  # the official map is resized to the input size
    scale = out_size / in_size
    mapx = [float(v) * out_size for v in mapx]
    mapy = [float(v) * out_size for v in mapy]
    threshold = scale * dense * in_size / att_size
    for j in range(iters):
        map_maxx = max(0.0, max(mapx))
        map_maxy = max(0.0, max(mapy))
        map_maxx = map_maxy if map_maxx > map_maxy else map_maxx
        threshold_in_use = map_maxx
        if j == 0:
            threshold_in_use = map_maxx if threshold > map_maxx else threshold
        mapx = [threshold_in_use if v > threshold_in_use else v for v in mapx]
        mapy = [threshold_in_use if v > threshold_in_use else v for v in mapy]
        deltax = (out_size - sum(mapx)) / att_size
        deltay = (out_size - sum(mapy)) / att_size
        mapx = [v + deltax for v in mapx]
        mapy = [v + deltay for v in mapy]
    mapxi, mapyi = [1.0] * att_size, [1.0] * att_size
    for i in range(att_size - 1):
        mapxi[i + 1] = mapxi[i] + mapx[i + 1]
        mapyi[i + 1] = mapyi[i] + mapy[i + 1]
    myscale = 2.0 / (att_size - 1)

    def walk(cum):
        step = cum[att_size - 1] / out_size
        index, i, j = [0.0] * out_size, 0, 0
        while i < out_size:
            if cum[j] >= i * step:
                # j = 0 reads cum[-1], before the buffer (the previous image's total); that lands
                # within 0.005 pixel of 0, so the port uses 0 there
                pos = 0.0 if j == 0 else j + (i * step - cum[j]) / (cum[j] - cum[j - 1])
                index[i] = pos * myscale - 1.0
                i += 1
            else:
                j += 1
        return index

    return np.array(walk(mapyi)), np.array(walk(mapxi))  # index_x from the columns' profile


def _official_grid(att, size, out, dense=4.0):
    up = F.interpolate(att[:, None].double(), size=(size, size), mode="bilinear", align_corners=True)[:, 0]
    xs, ys = [], []
    for a in up:
        rows = a.amax(1)  # max over x: the profile along y (official map_sx, passed as attx)
        cols = a.amax(0)  # max over y: the profile along x (map_sy, passed as atty)
        ix, iy = _operator((rows / rows.sum()).tolist(), (cols / cols.sum()).tolist(), out, dense)
        xs.append(ix)
        ys.append(iy)
    return np.stack(xs), np.stack(ys)


def _blob(cy, cx, sy, sx, n=28):
    y, x = torch.meshgrid(torch.arange(n).float(), torch.arange(n).float(), indexing="ij")
    return torch.exp(-((y - cy) / sy) ** 2 / 2 - ((x - cx) / sx) ** 2 / 2)


def _maps():
    torch.manual_seed(0)
    feats = torch.randn(1, 64, 28, 28).relu() + 2 * _blob(9, 17, 3, 4)[None, None]
    structure = trilinear_attention(feats, 7.0).mean(1)[0]
    return {
        "uniform": torch.ones(28, 28),
        "one blob": _blob(10, 18, 3, 3),
        "elongated blob": _blob(14, 8, 1.5, 9),
        "two blobs": _blob(6, 6, 2, 2) + 0.7 * _blob(20, 21, 3, 2),
        "trilinear structure map": structure,
    }


@pytest.mark.parametrize("name", list(_maps()))
def test_official_grid_matches_the_official_operator_within_one_pixel(name):
    att = _maps()[name][None]
    size, out = 512, 224
    ref_x, ref_y = _official_grid(att, size, out)
    r = attention_sample(torch.zeros(1, 3, size, size), att, out, grid="official")  # the default coupled cap
    gx, gy = r.grid[0, 0, :, 0].double().numpy(), r.grid[0, :, 0, 1].double().numpy()
    px = lambda g: (g + 1) * (size - 1) / 2  # noqa: E731  normalized → input pixels (align_corners=True)
    dx, dy = np.abs(px(gx) - px(ref_x[0])), np.abs(px(gy) - px(ref_y[0]))
    assert dx.max() < 1.0 and dy.max() < 1.0
    # typically far closer: the same arithmetic, up to float32 rounding of the cumulative map where the
    # density is small (a rounding of 1e-5 in C is then a fraction of a pixel)
    assert np.median(dx) < 0.01 and np.median(dy) < 0.01


def test_coupled_cap_barely_zooms_a_peaked_x_with_a_flat_y():
    # a thin vertical band: peaked profile along x, flat along y
    att = torch.zeros(1, 28, 28)
    att[0, :, 13:15] = 1.0
    images = torch.zeros(1, 3, 512, 512)

    def zoom(r):
        x = (r.grid[0, 0, 3:, 0] + 1) * 511 / 2  # past the official grid's repeated first pixels
        return float((512 / 224) / (x[1:] - x[:-1]).min())

    coupled = zoom(attention_sample(images, att, 224, grid="official"))
    per_axis = zoom(attention_sample(images, att, 224, cap="per_axis", grid="centered"))
    assert coupled < 1.1 and per_axis > 3.9


def test_official_grid_of_a_uniform_map_is_a_resize_shifted_by_one_output_pixel():
    r = attention_sample(torch.zeros(1, 3, 512, 512), torch.ones(1, 7, 7), 224, grid="official")
    x = ((r.grid[0, 0, :, 0] + 1) * 511 / 2).double().numpy()
    m = 224 / 512  # mass per input pixel, in output pixels
    total = 1 + 511 * m  # the cumulative map starts at 1, not at the first pixel's mass
    i = np.arange(1, 224)
    assert x[0] == 0.0
    np.testing.assert_allclose(x[1:], (i * total / 224 - 1) / m, atol=2e-3)
    # an align_corners=True resize reads i·511/223: the official grid is one output pixel behind it
    np.testing.assert_allclose(x[1:] - i * 511 / 223, -511 / 223, atol=0.01)

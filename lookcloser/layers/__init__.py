"""Reusable attention blocks, batched and vectorized, usable on their own."""

from .bap import bilinear_attention_pooling
from .crop_drop import (attention_boxes, attention_crop, attention_drop, attention_drop_mask, crop_resize,
                        select_attention, uniform_thresholds)
from .proposals import BoxFile, crop_patches, peak_proposals
from .sampler import SampleResult, attention_sample, cap_density, inverse_cdf
from .trilinear import trilinear_attention

__all__ = ["BoxFile", "SampleResult", "crop_patches", "peak_proposals", "attention_boxes", "attention_crop", "attention_drop", "attention_drop_mask",
           "attention_sample", "bilinear_attention_pooling", "cap_density", "crop_resize", "inverse_cdf",
           "select_attention", "trilinear_attention", "uniform_thresholds"]

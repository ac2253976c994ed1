"""Reusable attention blocks, batched and vectorized, usable on their own."""

from .sampler import SampleResult, attention_sample, cap_density, inverse_cdf
from .trilinear import trilinear_attention

__all__ = ["SampleResult", "attention_sample", "cap_density", "inverse_cdf", "trilinear_attention"]

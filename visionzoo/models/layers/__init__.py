"""Reusable layers of the zoo's model families."""

from .routing_attention import BiLevelRoutingAttention, TopkRouting, region_partition, region_reverse

__all__ = ["BiLevelRoutingAttention", "TopkRouting", "region_partition", "region_reverse"]

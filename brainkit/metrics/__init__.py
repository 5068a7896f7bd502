"""Metrics: localisation, segmentation, retrieval, text and clinical scores (library implementations underneath)."""

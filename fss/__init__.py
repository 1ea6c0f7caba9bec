"""fss: few-shot semantic segmentation experiments with pluggable support masking."""

__version__ = "0.1.0"

"""coco-seg: a Tensorleap integration for COCO semantic segmentation, and offline analysis of where models fail."""

__version__ = "0.1.0"

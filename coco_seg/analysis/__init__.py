"""Offline analysis of a trained model: where and why it fails (coco-seg analyze)."""

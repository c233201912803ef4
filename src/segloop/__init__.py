"""segloop: AI-assisted segmentation of 3D medical images."""

__version__ = "0.1.0"

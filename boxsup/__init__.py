"""BoxSup: training semantic segmentation networks from bounding boxes (Dai, He, Sun 2015)."""

__version__ = "0.1.0"

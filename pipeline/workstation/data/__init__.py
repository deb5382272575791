"""Datasets: ImageFolder trees (given by path or laid out from a named dataset) and
the in-memory image tensors that training and evaluation read."""
from pipeline.imagefolder import ImageDataset, ImageSplit, open_image_folder
from pipeline.workstation.data.sources import DATASETS, open_dataset

__all__ = ["DATASETS", "ImageDataset", "ImageSplit", "open_dataset", "open_image_folder"]

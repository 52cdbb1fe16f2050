"""Images in: folders and splits, decoding, augmentation, tf.data."""

from tl_keras.data.augment import augment, build_augmenter
from tl_keras.data.folders import IMAGE_EXTENSIONS, scan_folder
from tl_keras.data.images import decode_image, find_unreadable, resize_images
from tl_keras.data.layout import SPLIT_DIRS
from tl_keras.data.pipelines import (
    EpochShuffle,
    ImageData,
    data_section,
    from_arrays,
    full_batches,
    make_datasets,
)
from tl_keras.data.sampling import sample_training_set

__all__ = [
    "IMAGE_EXTENSIONS",
    "SPLIT_DIRS",
    "EpochShuffle",
    "ImageData",
    "augment",
    "build_augmenter",
    "data_section",
    "decode_image",
    "find_unreadable",
    "from_arrays",
    "full_batches",
    "make_datasets",
    "resize_images",
    "sample_training_set",
    "scan_folder",
]

"""Benchmark: tl_keras's image-folder pipeline vs
`keras.utils.image_dataset_from_directory` with its defaults.

Both read the same folder of JPEGs (written here, random sizes around the
target size) and deliver batches of float32 images at the same size for
the same number of epochs, in this one process. tl_keras's time includes
its start-up check that every file decodes (PIL, in threads) and the
epoch that fills its in-memory cache; Keras's default pipeline decodes
every file every epoch (no cache, no prefetch).

    python bench/input_pipeline.py                  # 2,000 images, 10 epochs
    python bench/input_pipeline.py --images=300     # a quick look

10 epochs is tl_keras's default --epochs. The first epoch of tl_keras is
slower than Keras's (it fills the cache, and its resize is antialiased:
the same resize the export runs), so the ratio grows with the epochs;
the script prints the overall and the steady-state (last epoch) ratios.
"""

import argparse
import os
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

import tl_keras  # noqa: E402
from tl_keras import data as data_lib  # noqa: E402


def write_folder(root, n, classes=5, size=256, seed=0):
    rng = np.random.default_rng(seed)
    for i in range(n):
        folder = os.path.join(root, f"class_{i % classes}")
        os.makedirs(folder, exist_ok=True)
        h, w = (int(v) for v in rng.integers(size * 3 // 4, size * 5 // 4,
                                             2))
        # Smooth random images: JPEG sizes like photos', not like noise.
        small = rng.integers(0, 256, (h // 16 + 1, w // 16 + 1, 3),
                             dtype=np.uint8)
        Image.fromarray(small).resize((w, h), Image.BILINEAR).save(
            os.path.join(folder, f"{i:05d}.jpg"), quality=90)


def consume(ds, epochs):
    """Iterates `ds` for `epochs`; returns (seconds per epoch, images)."""
    seconds, count = [], 0
    for _ in range(epochs):
        start = time.perf_counter()
        for x, _ in ds:
            count += int(x.shape[0])
        seconds.append(time.perf_counter() - start)
    return seconds, count


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--size", type=int, default=160)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch_size", type=int, default=32)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as root:
        folder = os.path.join(root, "images")
        write_folder(folder, args.images)
        start = time.perf_counter()
        keras_ds = keras.utils.image_dataset_from_directory(
            folder, image_size=(args.size, args.size),
            batch_size=args.batch_size)
        keras_setup = time.perf_counter() - start
        keras_epochs, keras_n = consume(keras_ds, args.epochs)

        config = tl_keras.Config(
            data_dir=folder, workdir=os.path.join(root, "run"),
            batch_size=args.batch_size, augment="none",
            validation_split=0.01, test_split=0.0)
        start = time.perf_counter()
        data = data_lib.make_datasets(config, args.size)
        tl_setup = time.perf_counter() - start
        # All images: train plus the small validation split.
        tl_epochs, tl_n = consume(data.train.concatenate(data.val),
                                  args.epochs)
    keras_total = keras_setup + sum(keras_epochs)
    tl_total = tl_setup + sum(tl_epochs)
    print(f"\n{args.images} JPEGs -> {args.size} px float32 batches of "
          f"{args.batch_size}, {args.epochs} epochs:")
    for name, setup, epochs, n, total in (
            ("image_dataset_from_directory", keras_setup, keras_epochs,
             keras_n, keras_total),
            ("tl_keras", tl_setup, tl_epochs, tl_n, tl_total)):
        per_epoch = " ".join(f"{s:.1f}" for s in epochs)
        print(f"  {name:<29} setup {setup:4.1f} s, {total:5.1f} s in all "
              f"= {n / total:7.1f} images/s; epochs (s): {per_epoch}")
    ratio = (tl_n / tl_total) / (keras_n / keras_total)
    steady = keras_epochs[-1] / tl_epochs[-1] * (tl_n / keras_n)
    print(f"  tl_keras / keras: {ratio:.2f}x images/s overall, "
          f"{steady:.2f}x in the last epoch")


if __name__ == "__main__":
    main()

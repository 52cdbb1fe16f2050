"""--inputs of --mode=predict: files, folders and globs."""

import os

from conftest import write_image_folder

from tl_keras.modes import predict


def test_a_folder_a_glob_matches_is_walked_like_a_named_one(tmp_path):
    root = write_image_folder(str(tmp_path / "shots"), num_classes=2,
                              per_class=2, formats=("png",))
    named = predict.expand_inputs(root)
    assert len(named) == 4
    # shots/* matches the folders class_0 and class_1 only.
    assert predict.expand_inputs(os.path.join(root, "*")) == named
    assert predict.expand_inputs(os.path.join(str(tmp_path), "sho*")) == (
        named)

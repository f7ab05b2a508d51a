"""mask | box | semi: which training images the algorithm may see masks for."""

import numpy as np
import pytest

from boxsup.data.annotations import ImageAnnotation, Supervision
from boxsup.data.supervision import apply_supervision, images_with_masks
from boxsup.errors import BoxSupError
from boxsup.trainers.training_set import random_crop_flip

IDS = [f"im{i:02d}" for i in range(20)]


def test_modes():
    assert images_with_masks(IDS, "mask", 0) == set(IDS)
    assert images_with_masks(IDS, "box", 0) == set()
    semi = images_with_masks(IDS, "semi", 0, fraction=0.25)
    assert len(semi) == 5 and semi == images_with_masks(list(reversed(IDS)), "semi", 0, fraction=0.25)
    assert semi != images_with_masks(IDS, "semi", 1, fraction=0.25)


def test_semi_from_a_list(tmp_path):
    listing = tmp_path / "masks.txt"
    listing.write_text("im01\nim03\n")
    assert images_with_masks(IDS, "semi", 0, mask_list=str(listing)) == {"im01", "im03"}
    listing.write_text("im01\nzz\n")
    with pytest.raises(BoxSupError, match="masks.txt: 1 ids not in the training split"):
        images_with_masks(IDS, "semi", 0, mask_list=str(listing))
    with pytest.raises(BoxSupError, match="not found"):
        images_with_masks(IDS, "semi", 0, mask_list=str(tmp_path / "none.txt"))


def test_images_without_masks_fall_back_to_boxes():
    anns = [ImageAnnotation("a", 4, 4, has_mask=True), ImageAnnotation("b", 4, 4, has_mask=False)]
    assert apply_supervision(anns, {"a", "b"}) == ["b"]
    assert [a.supervision for a in anns] == [Supervision.MASK, Supervision.BOX]


def test_crop_pads_with_ignore_and_keeps_pairs_aligned():
    image = np.arange(3 * 5 * 3, dtype=np.uint8).reshape(3, 5, 3)
    target = np.arange(15, dtype=np.uint8).reshape(3, 5)
    out_image, out_target = random_crop_flip(image, target, 4, np.random.default_rng(0))
    assert out_image.shape == (4, 4, 3) and out_target.shape == (4, 4)
    assert (out_target == 255).sum() == 4  # the padded row
    valid = out_target != 255
    # every kept target pixel still sits under the image pixel it came with
    assert np.array_equal(out_image[valid][:, 0] // 3, out_target[valid])


def test_audit_images_are_a_seeded_share_of_the_masked_or_a_list(tmp_path):
    from boxsup.data.supervision import audit_images

    with_masks = [f"m{i}" for i in range(20)]
    picked = audit_images(with_masks, seed=3, fraction=0.25)
    assert len(picked) == 5 and picked <= set(with_masks)
    assert audit_images(with_masks, seed=3, fraction=0.25) == picked  # the seed fixes the draw
    listed = tmp_path / "audit.txt"
    listed.write_text("m1\nm2\n")
    assert audit_images(with_masks, seed=3, audit_list=str(listed), ids=[*with_masks, "b0"]) == {"m1", "m2"}
    listed.write_text("m1\nb0\n")
    with pytest.raises(BoxSupError, match=r"audit.txt: 1 audit images have no mask, e.g. 'b0'"):
        audit_images(with_masks, seed=3, audit_list=str(listed), ids=[*with_masks, "b0"])

"""edmguide.util.images: channel layout by type, PNG round trip, atomic writes."""

import io

import numpy as np
import PIL.Image
import pytest
import torch

from edmguide.util import images


def _decode(png):
    return np.asarray(PIL.Image.open(io.BytesIO(png)))


def test_layout_follows_the_type_even_for_3x3x3_images():
    hwc = np.arange(27, dtype=np.uint8).reshape(3, 3, 3)  # pixel (y, x) has channels hwc[y, x]
    chw = torch.from_numpy(hwc.transpose(2, 0, 1).copy())
    assert np.array_equal(images.to_hwc_uint8(hwc), hwc)
    assert np.array_equal(images.to_hwc_uint8(chw), hwc)
    assert np.array_equal(_decode(images.encode_png(chw)), hwc)
    assert np.array_equal(_decode(images.encode_png(hwc)), hwc)


def test_gray_and_rgba_images_keep_their_channels():
    gray = np.arange(12, dtype=np.uint8).reshape(3, 4)
    assert np.array_equal(_decode(images.encode_png(gray)), gray)
    assert np.array_equal(_decode(images.encode_png(torch.from_numpy(gray)[None])), gray)
    rgba = np.arange(2 * 5 * 4, dtype=np.uint8).reshape(2, 5, 4)
    assert np.array_equal(_decode(images.encode_png(rgba)), rgba)


@pytest.mark.parametrize('bad, error', [(np.zeros((4, 4, 3), np.float32), TypeError),
                                        (np.zeros((4, 4, 2), np.uint8), ValueError),
                                        (torch.zeros(5, 5, 3, dtype=torch.uint8), ValueError),  # HWC given as a tensor: 5 channels
                                        (np.zeros((1, 4, 4, 3), np.uint8), ValueError)])
def test_wrong_dtype_channels_or_rank_are_refused(bad, error):
    with pytest.raises(error):
        images.to_hwc_uint8(bad)


def test_save_png_writes_atomically_and_leaves_no_temp_file(tmp_path):
    path = tmp_path / 'sub' / 'img.png'
    images.save_png(str(path), np.full((2, 2, 3), 7, np.uint8))
    assert np.array_equal(np.asarray(PIL.Image.open(path)), np.full((2, 2, 3), 7, np.uint8))
    assert sorted(p.name for p in path.parent.iterdir()) == ['img.png']

"""Image sets for metrics: which files, in which order, which subset, and their errors."""

import os

import numpy as np
import pytest
import torch

from edmguide.util.errors import UserError
from edmguide.metrics import pipeline
from edmguide.metrics.image_files import ImageFiles, collate_images, select_subset
import helpers_metrics as hm

def test_directory_recursive_sorted_with_npy_and_gray(tmp_path):
    gray = hm.random_images(3, channels=1, size=8)
    hm.write_image_dir(tmp_path, gray, names=['b.png', 'A/c.PNG', 'a.png'])
    np.save(tmp_path / 'z.npy', gray[0][:, :, 0]) # HW array -> 1 x H x W
    (tmp_path / 'notes.txt').write_text('not an image')
    ds = ImageFiles(str(tmp_path))
    assert ds.names == sorted(['b.png', os.path.join('A', 'c.PNG'), 'a.png', 'z.npy'])
    assert ds.image_shape == (1, 8, 8)
    image, error = ds[ds.names.index('z.npy')]
    assert error == '' and np.array_equal(image[0], gray[0][:, :, 0])

def test_zip_and_directory_read_the_same_pixels(tmp_path):
    images = hm.random_images(5, size=8)
    a = ImageFiles(hm.write_image_dir(tmp_path / 'd', images))
    b = ImageFiles(hm.write_image_zip(tmp_path / 'z.zip', images))
    assert a.names == b.names
    for i in range(5):
        assert np.array_equal(a[i][0], b[i][0])
        assert np.array_equal(a[i][0], images[i].transpose(2, 0, 1))

def test_subset_selection_follows_upstream_rule():
    expected = np.arange(10)
    np.random.RandomState((2**31 + 3) % 2**31).shuffle(expected)
    np.testing.assert_array_equal(select_subset(10, 4, seed=2**31 + 3), np.sort(expected[:4]))
    np.testing.assert_array_equal(select_subset(10, 10), np.arange(10))
    np.testing.assert_array_equal(select_subset(10, None), np.arange(10))

def test_gray_images_are_repeated_to_rgb_for_detectors():
    gray = torch.randint(0, 256, (2, 1, 4, 4), dtype=torch.uint8)
    rgb = pipeline.to_rgb(gray)
    assert rgb.shape == (2, 3, 4, 4) and all(torch.equal(rgb[:, c], gray[:, 0]) for c in range(3))
    with pytest.raises(UserError, match='4 channels'):
        pipeline.to_rgb(torch.zeros(1, 4, 4, 4, dtype=torch.uint8), 'set.zip')

def test_collate_passes_errors_on():
    assert collate_images([(np.zeros((1, 2, 2), np.uint8), ''), (None, 'bad entry')]) == (None, 'bad entry')
    batch, error = collate_images([(np.zeros((1, 2, 2), np.uint8), '')] * 3)
    assert error == '' and batch.shape == (3, 1, 2, 2) and batch.dtype == torch.uint8

def test_errors(tmp_path):
    with pytest.raises(UserError, match='no such file'):
        ImageFiles(str(tmp_path / 'missing'))
    (tmp_path / 'file.txt').write_text('x')
    with pytest.raises(UserError, match='directory or a .zip'):
        ImageFiles(str(tmp_path / 'file.txt'))
    (tmp_path / 'broken.zip').write_bytes(b'not a zip')
    with pytest.raises(UserError, match='not a readable zip'):
        ImageFiles(str(tmp_path / 'broken.zip'))
    empty = tmp_path / 'empty'
    empty.mkdir()
    with pytest.raises(UserError, match='no image files'):
        ImageFiles(str(empty))
    bad_first = tmp_path / 'badfirst'
    bad_first.mkdir()
    (bad_first / '0.png').write_bytes(b'not png')
    with pytest.raises(UserError, match='cannot read image "0.png"'):
        ImageFiles(str(bad_first))
    sixteen = tmp_path / 'sixteen'
    sixteen.mkdir()
    np.save(sixteen / 'a.npy', np.zeros((2, 2), np.uint16))
    with pytest.raises(UserError, match='8-bit'):
        ImageFiles(str(sixteen))

def test_zip_reads_correctly_through_forked_dataloader_workers(tmp_path):
    # The dataset opens the zip in __init__ (to check the first image); forked workers must not
    # share that handle, or reads interleave and fail with bad CRCs.
    import io
    import zipfile
    import PIL.Image
    rng = np.random.default_rng(0)
    arrays = [rng.integers(0, 256, (24, 24, 3), dtype=np.uint8) for _ in range(48)]
    with zipfile.ZipFile(tmp_path / 'imgs.zip', 'w') as zf:
        for k, arr in enumerate(arrays):
            buf = io.BytesIO()
            PIL.Image.fromarray(arr).save(buf, format='png')
            zf.writestr(f'{k:06d}.png', buf.getvalue())
    dataset = ImageFiles(tmp_path / 'imgs.zip')
    loader = torch.utils.data.DataLoader(dataset, batch_size=4, num_workers=2, collate_fn=collate_images,
                                         multiprocessing_context='fork')
    seen = []
    for images, error in loader:
        assert not error, error
        seen += [img.permute(1, 2, 0).numpy() for img in images]
    assert len(seen) == 48 and all(np.array_equal(s, a) for s, a in zip(seen, arrays))

def test_first_subset_takes_the_first_items_in_order_and_unknown_kinds_are_refused():
    from edmguide.metrics.image_files import select_subset
    np.testing.assert_array_equal(select_subset(10, 4, seed=5, subset='first'), np.arange(4))
    np.testing.assert_array_equal(select_subset(3, 4, subset='first'), np.arange(3)) # fewer than asked: all
    with pytest.raises(ValueError, match='subset must be one of'):
        select_subset(10, 4, subset='shuffled')

"""Reading an image set (directory or zip) for metrics, as upstream EDM2's image-folder dataset.

Which files count, their order and the random subset are part of the result (FID over a subset
depends on which images are in it), so they follow upstream exactly: names with one of PIL's
extensions or `.npy`, sorted as Python strings, and `RandomState(seed % 2**31)` for subsets.
Problems with the files are UserErrors naming the set and the entry.
"""

import os
import warnings
import zipfile

import numpy as np
import PIL.Image
import torch

from edmguide.util.errors import UserError

#----------------------------------------------------------------------------

def _image_extensions():
    PIL.Image.init()
    return set(PIL.Image.EXTENSION) | {'.npy'}

def _decode(data_file, name):
    """Bytes of one entry -> uint8 CHW array (gray stays 1 channel, RGBA 4, like upstream).

    Palette and 1-bit images are expanded to their colours / to 0..255 first: their raw arrays
    are palette indices or booleans, not intensities.
    """
    ext = os.path.splitext(name)[1].lower()
    if ext == '.npy':
        image = np.load(data_file, allow_pickle=False)
        if image.ndim < 2:
            raise ValueError(f'array of shape {image.shape} is not an image')
        image = image.reshape(-1, *image.shape[-2:])
    else:
        # PIL warns (several lines on stderr) about images beyond MAX_IMAGE_PIXELS and refuses
        # those beyond twice that; the warning is dropped here, so that what such an image leads
        # to (decoded, or refused with one line naming it) is all the user sees.
        with warnings.catch_warnings():
            warnings.simplefilter('ignore', PIL.Image.DecompressionBombWarning)
            pil = PIL.Image.open(data_file)
            pil.load()
        with pil:
            if pil.mode in ('P', 'PA'):
                pil = pil.convert('RGBA' if pil.mode == 'PA' or 'transparency' in pil.info else 'RGB')
            elif pil.mode == '1':
                pil = pil.convert('L')
            image = np.array(pil)
        if image.ndim == 2:
            image = image[:, :, np.newaxis]
        image = image.transpose(2, 0, 1)
    if image.dtype != np.uint8:
        raise ValueError(f'pixels are {image.dtype}, expected 8-bit (uint8)')
    return image

SUBSETS = ('random', 'first')

def select_subset(num_total, max_size=None, seed=0, subset='random'):
    """Indices of the images to use: all, or `max_size` of them: `subset='random'` draws them as
    upstream EDM2's dataset does (seeded shuffle, then sorted), `'first'` takes the first `max_size`
    in file order (StyleGAN's pr50k3 real set: the first 200k dataset items, no shuffle)."""
    if subset not in SUBSETS:
        raise ValueError(f'subset must be one of {SUBSETS}, got {subset!r}')
    indices = np.arange(num_total)
    if max_size is not None and num_total > max_size:
        if subset == 'first':
            return indices[:max_size]
        np.random.RandomState(seed % (1 << 31)).shuffle(indices)
        indices = np.sort(indices[:max_size])
    return indices

class ImageFiles(torch.utils.data.Dataset):
    """The images of a directory (searched recursively) or a zip, as uint8 CHW arrays.

    Item k is `(image, error)`: decoding failures are returned as a message instead of raised, so
    that they reach the main process as one clean line even from DataLoader workers.
    """

    def __init__(self, path, max_size=None, seed=0, subset='random'):
        self.path = os.fspath(path)
        if os.path.isdir(self.path):
            self._kind = 'dir'
            names = [os.path.relpath(os.path.join(root, fname), self.path)
                     for root, _dirs, files in os.walk(self.path) for fname in files]
        elif os.path.isfile(self.path) and self.path.lower().endswith('.zip'):
            self._kind = 'zip'
            try:
                with zipfile.ZipFile(self.path) as z:
                    names = z.namelist()
            except (zipfile.BadZipFile, OSError) as exc:
                raise UserError(f'{self.path}: not a readable zip file ({exc})') from exc
        elif not os.path.exists(self.path):
            raise UserError(f'{self.path}: no such file or directory')
        else:
            raise UserError(f'{self.path}: expected a directory or a .zip file of images')
        extensions = _image_extensions()
        all_names = sorted(name for name in names if os.path.splitext(name)[1].lower() in extensions)
        if not all_names:
            raise UserError(f'{self.path}: no image files found')
        self.num_found = len(all_names)
        self.names = [all_names[i] for i in select_subset(len(all_names), max_size, seed, subset)]
        self._zip = None
        self._zip_pid = None
        first, error = self.load(0)
        if error:
            raise UserError(error)
        self.image_shape = first.shape # every image must match it (C, H, W)

    def _open(self, name):
        if self._kind == 'dir':
            return open(os.path.join(self.path, name), 'rb')
        # One handle per process: DataLoader workers are forked with a copy of this object, and a
        # zip handle shared across processes reads garbage (their file offsets interfere).
        if self._zip is None or self._zip_pid != os.getpid():
            self._zip = zipfile.ZipFile(self.path)
            self._zip_pid = os.getpid()
        return self._zip.open(name, 'r')

    def load(self, idx):
        """(image, '') or (None, one-line error message) for entry `idx`."""
        name = self.names[idx]
        try:
            with self._open(name) as f:
                image = _decode(f, name)
        except Exception as exc: # pylint: disable=broad-except
            msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            return None, f'{self.path}: cannot read image "{name}": {msg}'
        expected = getattr(self, 'image_shape', None)
        if expected is not None and image.shape != expected:
            return None, (f'{self.path}: image "{name}" has shape {list(image.shape)}, but the first '
                          f'image has {list(expected)}')
        return image, ''

    def __getstate__(self):
        return dict(self.__dict__, _zip=None, _zip_pid=None)

    def __len__(self):
        return len(self.names)

    def __getitem__(self, idx):
        return self.load(idx)

def collate_images(items):
    """DataLoader collate: stack images to uint8 NCHW, or pass on the first error message."""
    for _image, error in items:
        if error:
            return None, error
    return torch.from_numpy(np.stack([image for image, _error in items])), ''

#----------------------------------------------------------------------------

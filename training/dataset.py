"""A minimal image-folder dataset under the name EDM2 pickles record in `dataset_kwargs`.

Pickles only store the class name as a string ('training.dataset.ImageFolderDataset'); this class
makes that name resolvable (e.g. by `dnnlib.util.construct_class_by_name`) for small local use.
It reads a directory or a zip archive of images, with optional labels in `dataset.json`
(`{"labels": [[relative_path, class_index], ...]}`).
"""

import io
import json
import os
import zipfile

import numpy as np

_IMAGE_EXTENSIONS = {'.png', '.jpg', '.jpeg', '.bmp', '.webp'}

#----------------------------------------------------------------------------

class ImageFolderDataset:
    """Images as uint8 CHW numpy arrays, labels as one-hot float32 vectors (empty when unused)."""

    def __init__(self, path, resolution=None, use_labels=False, max_size=None, name=None, **_ignored):
        self.path = path
        self.use_labels = use_labels
        self._zip = zipfile.ZipFile(path) if os.path.isfile(path) else None
        names = self._all_names()
        self._names = sorted(n for n in names if os.path.splitext(n)[1].lower() in _IMAGE_EXTENSIONS)
        if not self._names:
            raise OSError(f'{path}: no image files found')
        if max_size is not None:
            self._names = self._names[:max_size]
        self.name = name or os.path.splitext(os.path.basename(os.path.normpath(path)))[0]
        self._labels = self._load_labels() if use_labels else None
        shape = self._read_image(0).shape
        if resolution is not None and (shape[1] != resolution or shape[2] != resolution):
            raise OSError(f'{path}: images are {shape[2]}x{shape[1]}, expected {resolution}x{resolution}')
        self.image_shape = list(shape)

    def _all_names(self):
        if self._zip is not None:
            return self._zip.namelist()
        return [os.path.relpath(os.path.join(root, f), self.path).replace(os.sep, '/')
            for root, _dirs, files in os.walk(self.path) for f in files]

    def _open(self, name):
        return self._zip.open(name) if self._zip is not None else open(os.path.join(self.path, name), 'rb')

    def _read_image(self, idx):
        import PIL.Image
        with self._open(self._names[idx]) as f:
            image = np.array(PIL.Image.open(io.BytesIO(f.read())))
        if image.ndim == 2:
            image = image[:, :, np.newaxis]
        return image.transpose(2, 0, 1)

    def _load_labels(self):
        if 'dataset.json' not in self._all_names():
            return None
        with self._open('dataset.json') as f:
            table = dict(json.load(f).get('labels') or [])
        if not table:
            return None
        return np.array([table[n] for n in self._names], dtype=np.int64)

    @property
    def resolution(self):
        return self.image_shape[1]

    @property
    def num_channels(self):
        return self.image_shape[0]

    @property
    def label_dim(self):
        return 0 if self._labels is None else int(self._labels.max()) + 1

    def __len__(self):
        return len(self._names)

    def __getitem__(self, idx):
        label = np.zeros([self.label_dim], dtype=np.float32)
        if self._labels is not None:
            label[self._labels[idx]] = 1
        return self._read_image(idx), label

#----------------------------------------------------------------------------

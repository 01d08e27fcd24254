"""Writing images: PNG encoding, atomic file writes, and figure grids.

Every script that writes an image goes through here, so PNG settings, channel handling and the
temp-file-then-rename rule live in one place.
"""

import contextlib
import io
import os
import uuid

import numpy as np
import PIL.Image
import PIL.ImageDraw

from edmguide.util.errors import with_path


def to_hwc_uint8(image):
    """uint8 image -> numpy HWC uint8 array. The layout follows the type, never the shape (a 3x3x3
    image would be ambiguous): a torch tensor is CHW, as networks produce it; a numpy array is HWC,
    as PIL gives it. A 2-D input of either kind is one gray channel."""
    is_tensor = hasattr(image, 'detach')
    if is_tensor:
        image = image.detach().cpu().numpy()
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise TypeError(f'expected uint8 image, got {image.dtype}')
    if image.ndim == 2:
        return image[:, :, None]
    if image.ndim != 3:
        raise ValueError(f'expected a 2-D or 3-D image, got shape {tuple(image.shape)}')
    hwc = image.transpose(1, 2, 0) if is_tensor else image
    if hwc.shape[2] not in (1, 3, 4):
        layout = 'CHW tensor' if is_tensor else 'HWC array'
        raise ValueError(f'expected 1, 3 or 4 channels in a {layout}, got shape {tuple(image.shape)}')
    return hwc


def to_pil(image):
    """Numpy/tensor image -> PIL image (gray for 1 channel, RGB for 3, RGBA for 4)."""
    hwc = to_hwc_uint8(image)
    if hwc.shape[2] == 1:
        return PIL.Image.fromarray(hwc[:, :, 0], 'L')
    return PIL.Image.fromarray(hwc, {3: 'RGB', 4: 'RGBA'}[hwc.shape[2]])


def encode_png(image):
    """PNG bytes of an image, with PIL's default settings (as upstream's zips)."""
    buf = io.BytesIO()
    to_pil(image).save(buf, format='png')
    return buf.getvalue()


def temp_path_beside(path):
    """A fresh hidden temp name in the folder of `path` (same file system, so rename is atomic)."""
    directory, name = os.path.split(os.path.abspath(os.fspath(path)))
    return os.path.join(directory, f'.tmp-{uuid.uuid4().hex}-{name}')


@contextlib.contextmanager
def atomic_output(path, *, make_dirs=True):
    """Yield a temp name beside `path` to write; on success rename it to `path`, else delete it.

    A crash or Ctrl-C leaves either the old file or the complete new one, never a partial file.
    The file gets the usual permissions (umask), unlike `tempfile.mkstemp`'s private 0600.
    The folder is created unless `make_dirs` is False (then a vanished folder is an error). An
    OSError that names no file (a full disk) is re-raised naming `path`.
    """
    if make_dirs:
        os.makedirs(os.path.dirname(os.path.abspath(os.fspath(path))), exist_ok=True)
    tmp = temp_path_beside(path)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException as exc:
        if os.path.exists(tmp):
            os.remove(tmp)
        named = with_path(exc, path) if isinstance(exc, OSError) else exc
        if named is not exc:
            raise named from exc
        raise


def atomic_write(path, data, *, make_dirs=True):
    """Write bytes to `path` atomically (see `atomic_output`)."""
    with atomic_output(path, make_dirs=make_dirs) as tmp, open(tmp, 'xb') as f:
        f.write(data)


def save_png(path, image):
    """Encode and atomically write one PNG."""
    atomic_write(path, encode_png(image))


def seed_image_path(outdir, seed, subdirs=False):
    """Upstream EDM2 file naming: `<seed:06d>.png`, or grouped per 1000 seeds with `subdirs`."""
    name = f'{seed:06d}.png'
    if subdirs:
        return os.path.join(outdir, f'{seed - seed % 1000:06d}', name)
    return os.path.join(outdir, name)


# ----------------------------------------------------------------------------
# Grids.

def tile_grid(images, rows, cols):
    """Paste equally-sized HWC images onto a black canvas, image k at (row k // cols, col k % cols)."""
    images = [to_hwc_uint8(img) for img in images]
    h, w, c = images[0].shape
    canvas = np.zeros([rows * h, cols * w, c], dtype=np.uint8)
    for k, img in enumerate(images):
        r, col = divmod(k, cols)
        canvas[r * h:(r + 1) * h, col * w:(col + 1) * w] = img
    return canvas


def draw_box(image, x, y, size, thickness, color):
    """Square outline inside the `size`x`size` square at (x, y); line width from `thickness`.

    The line is `max(round(H * thickness), 1)` pixels wide (H = image height), as in the paper's
    figures (7e-3 -> 4 px, 4e-3 -> 2 px at 512 px).
    """
    out = to_hwc_uint8(image).copy()
    width = max(int(out.shape[0] * thickness + 0.5), 1)
    color = np.asarray(color, dtype=np.uint8)[:out.shape[2]]
    for t in range(width):
        out[y + t, x:x + size] = color
        out[y + size - 1 - t, x:x + size] = color
        out[y:y + size, x + t] = color
        out[y:y + size, x + size - 1 - t] = color
    return out


def zoom_inset(image, x, y, size):
    """The `size`x`size` crop at (x, y), enlarged to the full image size with Lanczos."""
    hwc = to_hwc_uint8(image)
    h, w = hwc.shape[:2]
    crop = to_pil(hwc).crop((x, y, x + size, y + size)).resize((w, h), PIL.Image.LANCZOS)
    return to_hwc_uint8(np.asarray(crop))


def label_font(size):
    """PIL's bundled scalable font at `size` pixels (Pillow >= 10.1), else its small bitmap font."""
    import PIL.ImageFont
    try:
        return PIL.ImageFont.load_default(size=size)
    except (TypeError, OSError, ImportError):  # older Pillow, or no FreeType
        return PIL.ImageFont.load_default()


def text_strip(width, height, items, *, font_size=20, color=(0, 0, 0), background=(255, 255, 255)):
    """A `height` x `width` RGB strip with each text centred in its (x0, x1) span: items = [((x0, x1), text)]."""
    strip = PIL.Image.new('RGB', (width, height), background)
    draw = PIL.ImageDraw.Draw(strip)
    font = label_font(font_size)
    for (x0, x1), text in items:
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        x = x0 + max((x1 - x0 - (right - left)) // 2, 0) - left
        draw.text((x, (height - (bottom - top)) // 2 - top), text, fill=color, font=font)
    return np.asarray(strip)


def add_label(image, text, height=None, font_size=None):
    """Image with a white caption strip above it (for the demo comparison grid). The caption is
    drawn at `font_size` pixels (default: about 2/3 of the strip's height)."""
    hwc = to_hwc_uint8(image)
    if hwc.shape[2] == 1:
        hwc = np.repeat(hwc, 3, axis=2)
    height = height or max(12, hwc.shape[1] // 12)
    strip = PIL.Image.new('RGB', (hwc.shape[1], height), (255, 255, 255))
    draw = PIL.ImageDraw.Draw(strip)
    font = label_font(font_size or max(int(height * 0.65), 10))
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    draw.text((6 - left, (height - (bottom - top)) // 2 - top), text, fill=(0, 0, 0), font=font)
    return np.concatenate([np.asarray(strip), hwc], axis=0)

"""Background clutter for the compositing renderer (the reference's COCO substitute).

Two sources, mixed per sample (docs/data.md 3.3), and optionally a third (3.4):

* **Photos.** By default the CC0 / public-domain photos that ship inside the
  scikit-image wheel, loaded from the installed package at run time (never
  copied into this repository). A user may point ``background_dir`` at a
  folder of their own images instead (e.g. COCO ``unlabeled2017`` as the
  reference uses).
* **Procedural clutter**: multi-octave value noise, linear and radial
  gradients, random polygons / ellipses / lines, stripes and checkerboards,
  with contrast jitter.
* **Scenes with faces** (``face_scene_prob``, off by default): procedural
  clutter with one to three other faces pasted in at random sizes, places and
  lightness, as the reference's COCO photos often show people. The caller
  supplies those faces (the pipeline draws them from identities that are not
  the dataset's subjects), so a network cannot find the face to classify by
  looking for anything face-like.

Everything is stored grey (uint8): the renderer outputs grey images, so colour
would only triple host memory and host-to-device traffic. Random crops at random
scales are cheap slices from a per-image 2x pyramid (no resampling per sample);
the renderer adds a continuous random zoom on device.
"""

from __future__ import annotations

import dataclasses
import pathlib
from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from feratt_jax.data._raster import ellipse_poly, polygon_coverage, thick_curve

# scikit-image sample images whose docstrings mark them CC0, public domain or
# "no known copyright restrictions" (docs/data.md 3.3). moon/page/logo/color/
# motorcycle state no licence and are left out on purpose.
SKIMAGE_PHOTOS = (
    "astronaut",
    "coffee",
    "chelsea",
    "rocket",
    "brick",
    "grass",
    "gravel",
    "hubble_deep_field",
    "retina",
    "camera",
    "horse",
    "coins",
    "text",
    "immunohistochemistry",
)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif")


def to_grey_u8(img: np.ndarray) -> np.ndarray:
    """Converts an image of any common dtype / channel layout to grey uint8.

    Uses the ITU-R 601 weights (0.299, 0.587, 0.114), as cv2's RGB2GRAY does
    in the reference.

    Args:
      img: (H, W), (H, W, 3) or (H, W, 4) array; bool, integer or float in [0, 1].

    Returns:
      (H, W) uint8.
    """
    img = np.asarray(img)
    if img.dtype == bool:
        img = img.astype(np.float32)
    elif np.issubdtype(img.dtype, np.integer):
        img = img.astype(np.float32) / float(np.iinfo(img.dtype).max)
    else:
        img = img.astype(np.float32)
    if img.ndim == 3:
        if img.shape[2] >= 3:
            img = img[..., 0] * 0.299 + img[..., 1] * 0.587 + img[..., 2] * 0.114
        else:
            img = img[..., 0]
    if img.ndim != 2:
        raise ValueError(f"expected a 2-D or 3-D image, got shape {img.shape}")
    return np.round(np.clip(img, 0.0, 1.0) * 255.0).astype(np.uint8)


def _halve(img: np.ndarray) -> np.ndarray:
    """2x2 block mean (anti-aliased 2x downsample), odd edges cropped."""
    h, w = img.shape[0] // 2 * 2, img.shape[1] // 2 * 2
    x = img[:h, :w].astype(np.float32)
    x = 0.25 * (x[0::2, 0::2] + x[1::2, 0::2] + x[0::2, 1::2] + x[1::2, 1::2])
    return np.round(x).astype(np.uint8)


def shrink_to(img: np.ndarray, max_side: int) -> np.ndarray:
    """Halves an image until its longer side is <= ``max_side``."""
    while max(img.shape) > max_side and min(img.shape) >= 4:
        img = _halve(img)
    return img


def pyramid(img: np.ndarray, crop_size: int) -> list[np.ndarray]:
    """2x pyramid levels whose shorter side is still >= ``crop_size``.

    A crop from a coarser level covers a larger part of the scene: this is the
    "random scale" of the random crops, without per-sample resampling. Images
    smaller than the crop are upsampled once (nearest-free, via zoom) so every
    source yields at least one level.
    """
    if min(img.shape) < crop_size:
        f = crop_size / min(img.shape)
        img = np.round(ndimage.zoom(img.astype(np.float32), f, order=1)).clip(0, 255).astype(np.uint8)
        img = img[: max(img.shape[0], crop_size), : max(img.shape[1], crop_size)]
    levels = [img]
    while min(levels[-1].shape) // 2 >= crop_size:
        levels.append(_halve(levels[-1]))
    return levels


def load_skimage_photos(names: Sequence[str] = SKIMAGE_PHOTOS) -> list[np.ndarray]:
    """Loads the scikit-image sample photos from the installed package.

    Args:
      names: ``skimage.data`` function names.

    Returns:
      List of grey uint8 images.

    Raises:
      RuntimeError: a photo could not be loaded (e.g. a scikit-image build
        without its sample data).
    """
    import skimage.data  # deferred: only needed when building a pool

    out = []
    for name in names:
        try:
            img = getattr(skimage.data, name)()
        except Exception as err:  # pragma: no cover - depends on the install
            raise RuntimeError(f"could not load skimage.data.{name}() for backgrounds: {err}") from err
        out.append(to_grey_u8(img))
    return out


def list_image_files(folder: str | pathlib.Path) -> list[pathlib.Path]:
    """Sorted image files directly inside ``folder`` (case-insensitive extensions).

    Raises:
      FileNotFoundError: the folder does not exist.
      NotADirectoryError: the path is not a folder.
      ValueError: the folder holds no image file.
    """
    path = pathlib.Path(folder).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"background_dir {str(path)!r} does not exist")
    if not path.is_dir():
        raise NotADirectoryError(f"background_dir {str(path)!r} is not a folder")
    files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
    if not files:
        raise ValueError(
            f"background_dir {str(path)!r} contains no images (looked for {', '.join(IMAGE_EXTENSIONS)}); "
            "put some photos there or leave background_dir empty to use the built-in backgrounds"
        )
    return files


def load_folder_images(
    folder: str | pathlib.Path, max_images: int = 500, max_side: int = 512, seed: int = 0
) -> list[np.ndarray]:
    """Loads a user folder of background photos as grey uint8.

    Args:
      folder: directory of images (not searched recursively).
      max_images: at most this many files are used (a seeded random subset
        when there are more), to bound host memory.
      max_side: images are halved until their longer side is <= this. The
        default keeps a 64 px crop about as large, relative to the scene, as
        the reference's 148 px window in a 640x1024 COCO image.
      seed: picks the subset.

    Returns:
      List of grey uint8 images.
    """
    from skimage import io  # deferred import

    files = list_image_files(folder)
    if len(files) > max_images:
        pick = np.random.default_rng(seed).choice(len(files), size=max_images, replace=False)
        files = [files[i] for i in sorted(pick)]
    out = []
    for f in files:
        try:
            img = io.imread(str(f))
        except Exception as err:
            raise ValueError(f"could not read background image {str(f)!r}: {err}") from err
        if img.ndim == 3 and img.shape[0] in (1, 3, 4) and img.shape[2] not in (1, 3, 4):
            img = np.moveaxis(img, 0, -1)  # channel-first TIFFs
        out.append(shrink_to(to_grey_u8(img), max_side))
    return out


# ---------------------------------------------------------------------------
# Procedural clutter
# ---------------------------------------------------------------------------


def _value_noise(rng: np.random.Generator, size: int, octaves: int = 5, persistence: float = 0.55) -> np.ndarray:
    """Multi-octave value noise in [0, 1]: a sum of bilinearly zoomed random grids."""
    out = np.zeros((size, size), np.float32)
    amp, total = 1.0, 0.0
    cells = int(rng.integers(2, 5))
    for _ in range(octaves):
        grid = rng.random((cells + 1, cells + 1)).astype(np.float32)
        up = ndimage.zoom(grid, size / cells, order=1, grid_mode=False)[:size, :size]
        if up.shape != (size, size):  # zoom rounding: pad by edge
            up = np.pad(up, ((0, size - up.shape[0]), (0, size - up.shape[1])), mode="edge")
        out += amp * up
        total += amp
        amp *= persistence
        cells *= 2
        if cells > size:
            break
    out /= total
    lo, hi = out.min(), out.max()
    return (out - lo) / max(hi - lo, 1e-6)


def _coords(size: int) -> tuple[np.ndarray, np.ndarray]:
    c = (np.arange(size, dtype=np.float32) + 0.5) / size
    return np.meshgrid(c, c, indexing="xy")


def _gradient(rng: np.random.Generator, size: int) -> np.ndarray:
    xx, yy = _coords(size)
    if rng.random() < 0.5:
        a = rng.uniform(0, 2 * np.pi)
        g = np.cos(a) * xx + np.sin(a) * yy
    else:
        cx, cy = rng.uniform(-0.2, 1.2, size=2)
        g = np.sqrt((xx - cx) ** 2 + (yy - cy) ** 2)
    g = (g - g.min()) / max(float(g.max() - g.min()), 1e-6)
    lo, hi = np.sort(rng.uniform(0, 1, size=2))
    return lo + (hi - lo) * g


def _stripes(rng: np.random.Generator, size: int) -> np.ndarray:
    xx, yy = _coords(size)
    a = rng.uniform(0, np.pi)
    freq = rng.uniform(3, 20)
    u = (np.cos(a) * xx + np.sin(a) * yy) * freq * 2 * np.pi + rng.uniform(0, 2 * np.pi)
    kind = rng.integers(3)
    if kind == 0:  # smooth
        s = 0.5 + 0.5 * np.sin(u)
    elif kind == 1:  # hard-edged
        s = (np.sin(u) > 0).astype(np.float32)
    else:  # checkerboard
        v = (-np.sin(a) * xx + np.cos(a) * yy) * freq * 2 * np.pi
        s = ((np.sin(u) > 0) ^ (np.sin(v) > 0)).astype(np.float32)
    lo, hi = np.sort(rng.uniform(0, 1, size=2))
    return lo + (hi - lo) * s


def _shapes(rng: np.random.Generator, size: int, base: np.ndarray) -> np.ndarray:
    """Random polygons, ellipses and thick lines painted over ``base``."""
    img = base.copy()
    for _ in range(int(rng.integers(4, 16))):
        kind = rng.integers(3)
        if kind == 0:
            n = int(rng.integers(3, 7))
            c = rng.uniform(0, size, size=2)
            r = rng.uniform(0.05, 0.35) * size
            ang = np.sort(rng.uniform(0, 2 * np.pi, size=n))
            rad = r * rng.uniform(0.5, 1.0, size=n)
            pts = np.stack([c[0] + rad * np.cos(ang), c[1] + rad * np.sin(ang)], axis=1)
        elif kind == 1:
            c = rng.uniform(0, size, size=2)
            pts = ellipse_poly(c[0], c[1], *(rng.uniform(0.03, 0.3, size=2) * size), n=24, angle=rng.uniform(0, np.pi))
        else:
            p0, p1 = rng.uniform(-0.1 * size, 1.1 * size, size=(2, 2))
            pts = thick_curve(np.stack([p0, p1]), rng.uniform(0.01, 0.06) * size)
        out = polygon_coverage(pts[:, 0], pts[:, 1], size, size, sub=2)
        if out is None:
            continue
        cov, r0, c0 = out
        h, w = cov.shape
        win = img[r0 : r0 + h, c0 : c0 + w]
        win += cov * (rng.random() - win)
    return img


def procedural_background(rng: np.random.Generator, size: int) -> np.ndarray:
    """One procedural clutter image.

    Args:
      rng: random stream.
      size: side length in pixels.

    Returns:
      (size, size) grey uint8.
    """
    kind = rng.integers(5)
    if kind == 0:
        img = _value_noise(rng, size)
    elif kind == 1:
        img = _gradient(rng, size) * 0.7 + 0.3 * _value_noise(rng, size)
    elif kind == 2:
        img = _stripes(rng, size)
        if rng.random() < 0.5:
            img = 0.6 * img + 0.4 * _value_noise(rng, size)
    elif kind == 3:
        img = _shapes(rng, size, _gradient(rng, size))
    else:
        img = _shapes(rng, size, _value_noise(rng, size))
    # Contrast / gamma jitter so no single intensity statistic marks the source.
    img = np.clip(img, 0.0, 1.0) ** np.exp(rng.normal(0, 0.4))
    if rng.random() < 0.5:
        img = ndimage.gaussian_filter(img, rng.uniform(0.3, 1.5))
    return np.round(np.clip(img, 0, 1) * 255).astype(np.uint8)


def paste_face(
    scene: np.ndarray, face: np.ndarray, mask: np.ndarray, top: int, left: int, side: int, gain: float, flip: bool = False
) -> np.ndarray:
    """One face composited onto a scene through its mask (a copy; parts off the scene are cut).

    Args:
      scene: (H, W) grey uint8.
      face: (S, S) grey uint8 face on black (the shared face schema).
      mask: (S, S) uint8 face mask (nonzero on the face).
      top, left: where the resized face's top-left corner goes (may be negative).
      side: side of the resized face in scene pixels.
      gain: lightness gain applied to the face.
      flip: mirror the face left-right.

    Returns:
      (H, W) uint8.
    """
    f = face[:, ::-1] if flip else face
    m = mask[:, ::-1] if flip else mask
    z = side / f.shape[0]
    f = ndimage.zoom(f.astype(np.float32), z, order=1)
    # A slightly soft edge, as a pasted photo cut-out has.
    a = np.clip(ndimage.gaussian_filter(ndimage.zoom((m > 0).astype(np.float32), z, order=1), 0.7), 0.0, 1.0)
    out = scene.astype(np.float32)
    h, w = out.shape
    y0, x0 = max(top, 0), max(left, 0)
    y1, x1 = min(top + f.shape[0], h), min(left + f.shape[1], w)
    if y1 <= y0 or x1 <= x0:
        return scene.copy()
    fs = f[y0 - top : y1 - top, x0 - left : x1 - left] * gain
    al = a[y0 - top : y1 - top, x0 - left : x1 - left]
    out[y0:y1, x0:x1] = al * fs + (1.0 - al) * out[y0:y1, x0:x1]
    return np.round(np.clip(out, 0, 255)).astype(np.uint8)


def face_scene(rng: np.random.Generator, size: int, faces: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """Procedural clutter with one to three of ``faces`` pasted in.

    Each face is 20-50 % of the scene's side (a crop of half the scene, the
    pool's usual window, shows it at 40-100 % of the crop: about the size of
    the face being composited, or smaller), placed anywhere it stays at least
    half inside, mirrored at random, with a lightness gain in [0.6, 1.3].

    Args:
      rng: random stream.
      size: scene side in pixels.
      faces: (N, S, S) uint8 faces on black.
      masks: (N, S, S) uint8 masks.

    Returns:
      (size, size) grey uint8.
    """
    scene = procedural_background(rng, size)
    for _ in range(int(rng.integers(1, 4))):
        i = int(rng.integers(len(faces)))
        side = max(8, int(round(size * rng.uniform(0.2, 0.5))))
        top, left = (int(v) for v in rng.integers(-side // 2, size - side // 2, size=2))
        scene = paste_face(scene, faces[i], masks[i], top, left, side, float(rng.uniform(0.6, 1.3)), bool(rng.random() < 0.5))
    return scene


# ---------------------------------------------------------------------------
# The pool: random crops at random scales
# ---------------------------------------------------------------------------


@dataclasses.dataclass
class BackgroundPool:
    """Grey source images (as 2x pyramids) from which random crops are cut.

    Attributes:
      photo_levels: per photo, its pyramid levels (grey uint8).
      procedural: procedural images (grey uint8), each >= crop_size.
      crop_size: side of the crops handed to the renderer.
      photo_prob: probability a crop comes from a photo (vs procedural), of
        the crops that are not face scenes.
      face_scenes: procedural scenes with faces in them (grey uint8).
      face_scene_prob: probability a crop comes from a face scene.
    """

    photo_levels: list[list[np.ndarray]]
    procedural: list[np.ndarray]
    crop_size: int
    photo_prob: float = 0.5
    face_scenes: list[np.ndarray] = dataclasses.field(default_factory=list)
    face_scene_prob: float = 0.0

    @classmethod
    def build(
        cls,
        crop_size: int,
        *,
        background_dir: str | None = None,
        num_procedural: int = 128,
        procedural_size: int | None = None,
        photo_prob: float = 0.5,
        max_images: int = 500,
        seed: int = 0,
        scene_faces: tuple[np.ndarray, np.ndarray] | None = None,
        face_scene_prob: float = 0.0,
        num_face_scenes: int = 64,
    ) -> "BackgroundPool":
        """Builds a pool from the scikit-image photos (or a user folder) plus procedural clutter.

        Args:
          crop_size: crop side in pixels.
          background_dir: optional folder of the user's own photos; replaces
            the scikit-image photos. Empty or missing folders raise.
          num_procedural: number of procedural images generated (seeded).
          procedural_size: their side (default ``2 * crop_size``, >= 96).
          photo_prob: probability a crop is a photo crop.
          max_images: cap on user photos loaded.
          seed: seed of the procedural images (and of the user subset).
          scene_faces: (faces, masks), each (N, S, S) uint8: the faces pasted
            into the face scenes; needed when ``face_scene_prob > 0``.
          face_scene_prob: probability a crop comes from a face scene.
          num_face_scenes: how many face scenes are drawn (seeded).

        Returns:
          The pool.
        """
        if crop_size < 8:
            raise ValueError(f"crop_size must be >= 8, got {crop_size}")
        if not 0.0 <= photo_prob <= 1.0:
            raise ValueError(f"photo_prob must be a probability in [0, 1], got {photo_prob}")
        if background_dir:
            photos = load_folder_images(background_dir, max_images=max_images, seed=seed)
        else:
            photos = load_skimage_photos()
        photo_levels = [pyramid(p, crop_size) for p in photos]
        size = procedural_size or max(2 * crop_size, 96)
        if size < crop_size:
            raise ValueError(f"procedural_size {size} is smaller than crop_size {crop_size}")
        rng = np.random.default_rng([seed, 0xB6])
        procedural = [procedural_background(rng, size) for _ in range(num_procedural)]
        if not procedural and photo_prob < 1.0:
            photo_prob = 1.0
        if not 0.0 <= face_scene_prob <= 1.0:
            raise ValueError(f"face_scene_prob must be a probability in [0, 1], got {face_scene_prob}")
        scenes = []
        if face_scene_prob > 0:
            if scene_faces is None or len(scene_faces[0]) == 0 or num_face_scenes < 1:
                raise ValueError("face_scene_prob > 0 needs scene_faces and num_face_scenes >= 1")
            # Its own stream: turning face scenes on leaves the other sources' images as they were.
            scene_rng = np.random.default_rng([seed, 0xFACE])
            scenes = [face_scene(scene_rng, size, *scene_faces) for _ in range(num_face_scenes)]
        return cls(photo_levels, procedural, crop_size, photo_prob, scenes, face_scene_prob)

    # Uniform draws consumed per crop by :meth:`crops`.
    DRAWS_PER_CROP = 7

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """``n`` random crops (random source, scale, position, flip, 90-degree turn, gamma).

        Args:
          rng: random stream (the caller's, so the crops are deterministic).
          n: number of crops.

        Returns:
          (n, crop_size, crop_size) uint8.
        """
        return self.crops(rng.random((n, self.DRAWS_PER_CROP)))

    def crops(self, u: np.ndarray) -> np.ndarray:
        """Crops from pre-drawn uniforms, one row of ``DRAWS_PER_CROP`` values in [0, 1) per crop.

        Taking the randomness as an argument lets the input pipeline draw it
        for a whole global batch and cut only this process's rows, so a batch
        does not depend on the number of processes.

        Args:
          u: (n, DRAWS_PER_CROP) uniforms.

        Returns:
          (n, crop_size, crop_size) uint8.
        """
        u = np.asarray(u, np.float64)
        n = u.shape[0]
        c = self.crop_size
        out = np.empty((n, c, c), np.uint8)
        # u0 splits the crops: the top face_scene_prob of [0, 1) goes to face scenes and the
        # rest is shared between photos and clutter in the ratio photo_prob; with no face
        # scenes this is the older rule ``u0 < photo_prob``, so the crops are unchanged.
        scene_share = self.face_scene_prob if self.face_scenes else 0.0
        use_scene = u[:, 0] >= 1.0 - scene_share  # u0 < 1: never with no scenes
        use_photo = u[:, 0] < self.photo_prob * (1.0 - scene_share)
        flips = np.minimum((u[:, 5] * 8).astype(np.int64), 7)
        # Gamma log-uniform in [e^-0.5, e^0.5]: mild contrast changes per crop.
        gammas = np.exp(u[:, 6] - 0.5)
        for i in range(n):
            if use_scene[i]:
                img = self.face_scenes[int(u[i, 1] * len(self.face_scenes))]
            elif (use_photo[i] and self.photo_levels) or not self.procedural:
                levels = self.photo_levels[int(u[i, 1] * len(self.photo_levels))]
                img = levels[int(u[i, 2] * len(levels))]
            else:
                img = self.procedural[int(u[i, 1] * len(self.procedural))]
            y = int(u[i, 3] * (img.shape[0] - c + 1))
            x = int(u[i, 4] * (img.shape[1] - c + 1))
            crop = img[y : y + c, x : x + c]
            f = int(flips[i])
            if f & 1:
                crop = crop[:, ::-1]
            if f & 2:
                crop = crop[::-1, :]
            if f & 4:
                crop = crop.T
            out[i] = crop
        # Gamma through a per-crop lookup table (cheap, stays uint8).
        levels_256 = np.arange(256, dtype=np.float32) / 255.0
        luts = np.round(255.0 * levels_256[None, :] ** gammas[:, None]).astype(np.uint8)  # (n,256)
        rows = np.arange(n)[:, None, None]
        return luts[rows, out]

    def __len__(self) -> int:
        return len(self.photo_levels) + len(self.procedural) + len(self.face_scenes)

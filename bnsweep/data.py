"""Data sets as whole tensors on the device, plus GPU-side augmentation and a seeded batch sampler.

No DataLoader: every data set here fits in memory, so a batch is just `x[idx]` (the airbench way).
"""

from __future__ import annotations

import gzip
import hashlib
import math
import os
import pickle
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from bnsweep.config import DATASETS, stream_seed
from bnsweep.errors import BnsweepError

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)
FMNIST_MEAN = (0.2860,)  # statistics of the unpadded 28x28 images; good enough for the padded ones
FMNIST_STD = (0.3530,)

CIFAR_DIR = "cifar-10-batches-py"
CIFAR_TRAIN = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR_TEST = "test_batch"
CIFAR_ROWS, CIFAR_PIXELS = 10_000, 3 * 32 * 32  # per batch: 10,000 images of 3,072 bytes (fewer in test fixtures)
MAX_CIFAR_BATCH_BYTES = 64 * 2**20  # a real batch is 31 MB: a larger file is not one, and is not read
FMNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
                "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
# The shape of each file in FMNIST_FILES: a header may declare fewer rows (a subset), never more or other sizes.
FMNIST_SHAPES = ((60_000, 28, 28), (60_000,), (10_000, 28, 28), (10_000,))
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")  # Debian package dataset-fashion-mnist
GAUSSIAN_DIM, GAUSSIAN_N = 10, 1000
# quadratic: n samples in d dimensions; Hessian eigenvalues log-spaced from curvature down to curvature/CONDITION;
# at w = 0 the loss is QUADRATIC_LOSS0, half of it in the top eigendirection.
QUADRATIC_DIM, QUADRATIC_N, QUADRATIC_CONDITION, QUADRATIC_LOSS0, QUADRATIC_TOP_SHARE = 16, 64, 10.0, 1000.0, 0.5

# (name, dir, file stamps) -> (train_x, train_y, test_x, test_y, checksum) as raw uint8 numpy arrays.
# The stamps (mtime, size) make a rewritten file miss the cache instead of returning stale data.
_RAW_CACHE: dict[tuple, tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, str]] = {}


@dataclass
class Dataset:
    name: str
    task: str  # "classification" or "regression"
    train_x: torch.Tensor = field(repr=False)
    train_y: torch.Tensor = field(repr=False)
    test_x: torch.Tensor = field(repr=False)
    test_y: torch.Tensor = field(repr=False)
    num_outputs: int
    checksum: str  # sha256[:16] of the raw bytes (train then test), before normalization
    source: str
    # Images stay uint8 on the device (4x less memory than float32) and are normalized a batch at a time.
    mean: torch.Tensor | None = field(default=None, repr=False)  # (1, C, 1, 1) on the device
    std: torch.Tensor | None = field(default=None, repr=False)

    @property
    def in_shape(self) -> tuple[int, ...]:
        return tuple(self.train_x.shape[1:])

    def inputs(self, x: torch.Tensor) -> torch.Tensor:
        """Stored examples (rows of train_x or test_x) -> what the network sees: uint8 images scaled to [0, 1]
        and normalized (the same float operations, in the same order, as normalizing the whole set at load)."""
        if x.dtype != torch.uint8:
            return x
        return x.float().div_(255).sub_(self.mean).div_(self.std)


def data_root(explicit: str | os.PathLike | None = None) -> Path | None:
    """explicit, else $BNSWEEP_DATA, else None."""
    if explicit is not None and str(explicit) != "":
        return Path(explicit).expanduser()
    env = os.environ.get("BNSWEEP_DATA")
    return Path(env).expanduser() if env else None


def _default_root() -> Path:
    return Path("~/.cache/bnsweep/data").expanduser()


def _checksum(*arrays: np.ndarray) -> str:
    h = hashlib.sha256()
    for a in arrays:
        h.update(np.ascontiguousarray(a).data)
    return h.hexdigest()[:16]


def _stamp(paths: list[Path]) -> tuple:
    return tuple((p.name, p.stat().st_mtime_ns, p.stat().st_size) for p in paths)


def _device(device: str | torch.device) -> torch.device:
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise BnsweepError(f"bad device {device!r}: use e.g. 'cpu' or 'cuda' ({e})") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise BnsweepError(f"device {device!r} requested but CUDA is not available: use device 'cpu'")
    return dev


@contextmanager
def _download_lock(root: Path) -> Iterator[None]:
    """Serialize downloads across processes (parallel trials) so the data is fetched once."""
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise BnsweepError(f"cannot create data directory {root} ({e}): "
                           "set --data-root / BNSWEEP_DATA to a writable place") from None
    lock_path = root / ".bnsweep-download.lock"
    try:
        from filelock import FileLock
    except ImportError:  # filelock normally comes with ray; fcntl is enough on Linux/macOS
        import fcntl

        with open(lock_path, "w") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)
        return
    with FileLock(str(lock_path)):
        yield


def _tensor(a: np.ndarray) -> torch.Tensor:
    # Arrays parsed with np.frombuffer are read-only; torch warns about those, so copy them.
    return torch.from_numpy(a if a.flags.writeable else a.copy())


def _images(x_u8: np.ndarray, dev: torch.device, pad: int = 0) -> torch.Tensor:
    """uint8 (N, C, H, W) -> uint8 on dev, zero-padded by `pad` raw pixels (normalized later, per batch). One new
    array, padded as it is copied, never a view of the cache: a copy and then a padded copy took 47 MB more at
    the peak of loading Fashion-MNIST."""
    x = np.pad(x_u8, ((0, 0), (0, 0), (pad, pad), (pad, pad))) if pad else np.array(x_u8)
    return torch.from_numpy(x).to(dev)


def _scale(values: tuple[float, ...], dev: torch.device) -> torch.Tensor:
    return torch.tensor(values, device=dev).view(1, -1, 1, 1)


def _labels(y_u8: np.ndarray, dev: torch.device) -> torch.Tensor:
    return _tensor(y_u8).to(dev).long()  # .long() copies, so the cache is never aliased


# ---------------------------------------------------------------- CIFAR-10


class _CifarUnpickler(pickle.Unpickler):
    """CIFAR-10's python batches are pickles: a dict of bytes, lists of ints and one uint8 array. Only the
    globals such an array needs are found; any other (os.system, ...) is refused before it can run."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype"),
               ("_codecs", "encode")}  # how pickle protocol 2 writes Python 3 bytes

    def find_class(self, module: str, name: str):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"{module}.{name} is not part of a CIFAR-10 batch")


def _read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One python batch: 1 to CIFAR_ROWS rows of CIFAR_PIXELS uint8 and a label 0..9 per row, as the real files
    hold; anything else (an empty or resized array, float labels) is refused, never cast into shape."""
    how = "replace it with torchvision's cifar-10-batches-py"
    try:
        if path.stat().st_size > MAX_CIFAR_BATCH_BYTES:
            raise BnsweepError(f"CIFAR-10 batch {path} is {path.stat().st_size:,} bytes, more than a batch of "
                               f"{CIFAR_ROWS:,} images can be: {how}")
        with open(path, "rb") as f:
            d = _CifarUnpickler(f, encoding="bytes").load()
        data, labels = d[b"data"], np.asarray(d[b"labels"])
    except BnsweepError:
        raise
    except Exception as e:  # truncated file, wrong format, missing keys
        raise BnsweepError(f"cannot read CIFAR-10 batch {path} ({type(e).__name__}: {e}): {how}") from None
    if (not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2
            or data.shape[1] != CIFAR_PIXELS or not 1 <= len(data) <= CIFAR_ROWS):
        got = f"{data.shape} {data.dtype}" if isinstance(data, np.ndarray) else type(data).__name__
        raise BnsweepError(f"CIFAR-10 batch {path} has data {got}, expected 1 to {CIFAR_ROWS:,} rows of "
                           f"{CIFAR_PIXELS} uint8: {how}")
    if labels.shape != (len(data),) or labels.dtype.kind not in "iu":
        raise BnsweepError(f"CIFAR-10 batch {path} has labels {labels.shape} {labels.dtype} for {len(data)} images, "
                           f"expected one whole number per image: {how}")
    if labels.min() < 0 or labels.max() > 9:
        raise BnsweepError(f"CIFAR-10 batch {path} has labels outside 0..9: replace the file")
    return data, labels.astype(np.uint8)


def _load_cifar(root: Path | None, download: bool, dev: torch.device) -> Dataset:
    base = root if root is not None else _default_root()
    d = base / CIFAR_DIR
    files = [d / n for n in (*CIFAR_TRAIN, CIFAR_TEST)]
    if not all(p.is_file() for p in files):
        how = "put torchvision's cifar-10-batches-py there, or set --data-root / BNSWEEP_DATA"
        if not download:
            raise BnsweepError(f"CIFAR-10 not found under {d} (download disabled): {how}")
        with _download_lock(base):
            if not all(p.is_file() for p in files):  # another process may have finished meanwhile
                try:
                    import torchvision

                    torchvision.datasets.CIFAR10(str(base), train=True, download=True)
                except Exception:
                    raise BnsweepError(f"CIFAR-10 not found under {d} and could not be downloaded "
                                       f"(offline?): {how}") from None
        if not all(p.is_file() for p in files):
            raise BnsweepError(f"CIFAR-10 download into {base} did not produce {d}: {how}")

    key = ("cifar10", str(d.resolve()), _stamp(files))
    if key not in _RAW_CACHE:
        parts = [_read_cifar_batch(p) for p in files]
        train_x = np.concatenate([x for x, _ in parts[:5]])
        train_y = np.concatenate([y for _, y in parts[:5]])
        test_x, test_y = parts[5]
        _RAW_CACHE[key] = (train_x, train_y, test_x, test_y, _checksum(train_x, train_y, test_x, test_y))
    train_x, train_y, test_x, test_y, checksum = _RAW_CACHE[key]
    return Dataset(
        name="cifar10", task="classification",
        # data rows are CHW row-major, so a plain reshape gives (N, 3, 32, 32)
        train_x=_images(train_x.reshape(-1, 3, 32, 32), dev),
        train_y=_labels(train_y, dev),
        test_x=_images(test_x.reshape(-1, 3, 32, 32), dev),
        test_y=_labels(test_y, dev),
        num_outputs=10, checksum=checksum, source=str(d), mean=_scale(CIFAR_MEAN, dev), std=_scale(CIFAR_STD, dev),
    )


# ---------------------------------------------------------------- Fashion-MNIST


def _fmnist_files(d: Path) -> list[Path] | None:
    """The four idx files in d (each gzipped or plain), or None if any is missing."""
    found = []
    for stem in FMNIST_FILES:
        p = next((q for q in (d / (stem + ".gz"), d / stem) if q.is_file()), None)
        if p is None:
            return None
        found.append(p)
    return found


def _read_idx(path: Path, magic: int, full: tuple[int, ...]) -> np.ndarray:
    """Parse an idx file (gzip detected by its header, not the name); checks the magic number, and the shape its
    header declares against `full`, the data set's (and a plain file's size) before anything is allocated: a
    forged header of 2^31 x 2^31 x 2^31 is one line, not a MemoryError. The bytes go straight into the array, a
    megabyte at a time: gzip.decompress held the compressed file, its output blocks and their joined copy at once
    (120 MB at the peak for Fashion-MNIST's training images, 47 MB this way)."""
    ndim = magic & 0xFF  # 2051 -> 3 dims (images), 2049 -> 1 dim (labels)
    header = 4 + 4 * ndim
    try:
        with open(path, "rb") as f:
            gzipped = f.read(2) == b"\x1f\x8b"
        with gzip.open(path, "rb") if gzipped else open(path, "rb") as f:
            head = f.read(header)
            if len(head) < header or int.from_bytes(head[:4], "big") != magic:
                got = int.from_bytes(head[:4], "big") if len(head) >= 4 else None
                raise BnsweepError(f"{path} is not an idx file with magic {magic} (got {got}): replace it")
            shape = tuple(int.from_bytes(head[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
            _check_idx_shape(path, shape, full, None if gzipped else os.fstat(f.fileno()).st_size - header)
            out = np.empty(math.prod(shape), dtype=np.uint8)
            view, size = memoryview(out), 0
            while size < len(out) and (n := f.readinto(view[size: size + 2**20])):
                size += n
            size += len(f.read())  # bytes past the header's size: a padded file
    except (OSError, EOFError, zlib.error) as e:
        raise BnsweepError(f"cannot read {path} ({e}): replace it (apt-get install --reinstall "
                           "dataset-fashion-mnist)") from None
    if size != len(out):
        raise BnsweepError(f"{path} is truncated or padded: header says {shape}, got {size} bytes; replace it")
    return out.reshape(shape)


def _check_idx_shape(path: Path, shape: tuple[int, ...], full: tuple[int, ...], size: int | None) -> None:
    """The shape an idx header declares: 1 to full[0] rows of full[1:], and, for a plain file, as many bytes as
    follow the header (`size`; a gzipped file is checked as it is read)."""
    if not 1 <= shape[0] <= full[0] or shape[1:] != full[1:]:
        rows = f"images of {' x '.join(map(str, full[1:]))}" if full[1:] else "labels"
        raise BnsweepError(f"{path}: its header declares shape {' x '.join(map(str, shape))}, but this Fashion-MNIST "
                           f"file holds 1 to {full[0]:,} {rows}: the file is corrupt or forged; replace it "
                           "(apt-get install --reinstall dataset-fashion-mnist)")
    if size is not None and size != math.prod(shape):
        raise BnsweepError(f"{path} is truncated or padded: header says {shape}, got {size} bytes; replace it")


def _read_fmnist(files: list[Path]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, str]:
    tr_x, tr_y, te_x, te_y = (_read_idx(p, m, full) for p, m, full in
                              zip(files, (2051, 2049, 2051, 2049), FMNIST_SHAPES, strict=True))
    for x, y, px, py in ((tr_x, tr_y, files[0], files[1]), (te_x, te_y, files[2], files[3])):
        if x.shape[1:] != (28, 28) or len(x) != len(y):
            raise BnsweepError(f"{px} ({x.shape}) and {py} ({len(y)} labels) do not match "
                               "Fashion-MNIST's N x 28 x 28 + N labels: replace them")
        if y.size and y.max() > 9:
            raise BnsweepError(f"{py} has labels outside 0..9: replace it")
    return tr_x, tr_y, te_x, te_y, _checksum(tr_x, tr_y, te_x, te_y)


def _load_fmnist(root: Path | None, download: bool, dev: torch.device, explicit: bool = False) -> Dataset:
    base = root if root is not None else _default_root()
    local = [base, base / "FashionMNIST" / "raw"]  # flat dir, or torchvision's layout
    # --data-root is the only place looked in: a user who names it must not silently get another copy. Otherwise
    # $BNSWEEP_DATA first, then the Debian package, then an earlier download into the default cache.
    if explicit:
        candidates = local
    else:
        candidates = local + [DEBIAN_FASHION_MNIST] if root is not None else [DEBIAN_FASHION_MNIST] + local
    files = next((f for f in map(_fmnist_files, candidates) if f is not None), None)

    if files is None:
        looked = ", ".join(str(c) for c in candidates)
        how = "apt-get install dataset-fashion-mnist, or set --data-root / BNSWEEP_DATA"
        if not download:
            raise BnsweepError(f"Fashion-MNIST not found (looked in {looked}; download disabled): {how}")
        raw_dir = base / "FashionMNIST" / "raw"
        with _download_lock(base):
            if _fmnist_files(raw_dir) is None:
                try:
                    import torchvision

                    torchvision.datasets.FashionMNIST(str(base), train=True, download=True)
                except Exception:
                    raise BnsweepError(f"Fashion-MNIST not found (looked in {looked}) and could not be "
                                       f"downloaded into {base} (offline?): {how}") from None
        files = _fmnist_files(raw_dir)
        if files is None:
            raise BnsweepError(f"Fashion-MNIST download into {base} did not produce {raw_dir}: {how}")

    key = ("fashion-mnist", str(files[0].parent.resolve()), _stamp(files))
    if key not in _RAW_CACHE:  # gunzip + parse once per process; tests and sweeps load it repeatedly
        _RAW_CACHE[key] = _read_fmnist(files)
    tr_x, tr_y, te_x, te_y, checksum = _RAW_CACHE[key]
    return Dataset(
        name="fashion-mnist", task="classification",
        # 28x28 -> 32x32 with a 2-pixel border of raw 0 (background), so VGG layouts match CIFAR
        train_x=_images(tr_x[:, None], dev, pad=2), train_y=_labels(tr_y, dev),
        test_x=_images(te_x[:, None], dev, pad=2), test_y=_labels(te_y, dev),
        mean=_scale(FMNIST_MEAN, dev), std=_scale(FMNIST_STD, dev),
        num_outputs=10, checksum=checksum, source=str(files[0].parent),
    )


# ---------------------------------------------------------------- gaussian-linear


def _gaussian_linear(data_seed: int, dev: torch.device) -> Dataset:
    """The paper's deep-linear-network task: y = A x, A ~ N(0,1)^{10x10}, x ~ N(0, I)."""
    g = torch.Generator().manual_seed(data_seed)  # CPU generator: identical data on every device
    a = torch.randn(GAUSSIAN_DIM, GAUSSIAN_DIM, generator=g)
    train_x = torch.randn(GAUSSIAN_N, GAUSSIAN_DIM, generator=g)
    test_x = torch.randn(GAUSSIAN_N, GAUSSIAN_DIM, generator=g)
    train_y, test_y = train_x @ a.T, test_x @ a.T
    checksum = _checksum(*(t.numpy() for t in (train_x, train_y, test_x, test_y)))
    return Dataset(
        name="gaussian-linear", task="regression",
        train_x=train_x.to(dev), train_y=train_y.to(dev), test_x=test_x.to(dev), test_y=test_y.to(dev),
        num_outputs=GAUSSIAN_DIM, checksum=checksum, source=f"generated (data_seed={data_seed})",
    )


# ---------------------------------------------------------------- quadratic


def quadratic_eigenvalues(curvature: float = 1.0) -> np.ndarray:
    """The Hessian eigenvalues of the quadratic task, largest first: curvature down to curvature/CONDITION."""
    return curvature * np.logspace(0.0, -np.log10(QUADRATIC_CONDITION), QUADRATIC_DIM)


def _quadratic(data_seed: int, curvature: float, dev: torch.device) -> Dataset:
    """A least-squares problem with a known Hessian, for the one-layer bias-free `linear` network.

    X = U diag(s) V^T (U: n x d orthonormal columns, V: d x d orthogonal, both drawn from data_seed) and y = U a,
    so the trial's loss sum_i (x_i w - y_i)^2 has Hessian 2 X^T X with eigenvalues 2 s^2 =
    quadratic_eigenvalues(curvature) and minimum 0. Full-batch gradient descent contracts eigendirection i by
    |1 - lr * lambda_i| per step: it converges for lr < 2/curvature and diverges above. a puts half the loss at
    w = 0 in the top direction, so at lr >= 2/curvature the loss never falls below half its start. The test set is
    the training set: the task measures optimization, not generalization.
    """
    g = torch.Generator().manual_seed(data_seed)  # CPU generator: identical data on every device
    d, n = QUADRATIC_DIM, QUADRATIC_N
    u = torch.linalg.qr(torch.randn(n, d, generator=g, dtype=torch.float64)).Q
    v = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64)).Q
    s = torch.from_numpy(np.sqrt(quadratic_eigenvalues(curvature) / 2))
    shares = torch.full((d,), (1 - QUADRATIC_TOP_SHARE) / (d - 1), dtype=torch.float64)
    shares[0] = QUADRATIC_TOP_SHARE
    signs = torch.randint(0, 2, (d,), generator=g).double() * 2 - 1
    a = signs * torch.sqrt(shares * QUADRATIC_LOSS0)
    x = (u * s) @ v.T
    y = (u @ a)[:, None]
    x, y = x.float(), y.float()
    checksum = _checksum(x.numpy(), y.numpy())
    return Dataset(
        name="quadratic", task="regression",
        train_x=x.to(dev), train_y=y.to(dev), test_x=x.clone().to(dev), test_y=y.clone().to(dev),
        num_outputs=1, checksum=checksum,
        source=f"generated (data_seed={data_seed}, curvature={curvature:g}, 2/curvature={2 / curvature:g})",
    )


def release_raw_cache() -> None:
    """Forget the parsed files kept for the next load_dataset call: a Ray worker, which keeps its one Dataset
    for trial after trial, does not need them (55 MB for Fashion-MNIST, 180 MB for CIFAR-10)."""
    _RAW_CACHE.clear()


def load_dataset(name: str, *, root: str | os.PathLike | None = None, device: str | torch.device = "cpu",
                 data_seed: int = 0, download: bool = True, curvature: float = 1.0) -> Dataset:
    """Load a whole data set as tensors on `device`. `data_seed` only matters for generated data, `curvature`
    only for quadratic."""
    if name not in DATASETS:
        raise BnsweepError(f"unknown dataset {name!r}: choose one of {', '.join(DATASETS)}")
    if isinstance(data_seed, bool) or not isinstance(data_seed, (int, np.integer)) or data_seed < 0:
        raise BnsweepError(f"bad data_seed {data_seed!r}: use a non-negative integer")
    dev = _device(device)
    if name == "gaussian-linear":
        return _gaussian_linear(int(data_seed), dev)
    if name == "quadratic":
        if isinstance(curvature, bool) or not (isinstance(curvature, (int, float)) and 0 < curvature < math.inf):
            raise BnsweepError(f"bad curvature {curvature!r}: use a positive number")
        return _quadratic(int(data_seed), float(curvature), dev)
    r = data_root(root)
    explicit = root is not None and str(root) != ""
    return _load_cifar(r, download, dev) if name == "cifar10" else _load_fmnist(r, download, dev, explicit)


# ---------------------------------------------------------------- augmentation and batching


def augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random crop (zero padding 4) + random horizontal flip, per image, done on x's device with the given
    generator (same device as x). Pure function: returns a new tensor."""
    if x.ndim != 4:
        raise BnsweepError(f"augment expects images (N, C, H, W), got shape {tuple(x.shape)}")
    if generator.device.type != x.device.type:
        raise BnsweepError(f"augment: generator on {generator.device} but images on {x.device}: "
                           "create the generator on the images' device")
    n, c, h, w = x.shape
    pad = 4
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator, device=x.device)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator, device=x.device)
    flip = torch.randint(0, 2, (n,), generator=generator, device=x.device).bool()
    # One gather does crop and flip together: a flipped image reads its crop window right to left.
    rows = dy[:, None] + torch.arange(h, device=x.device)  # (n, h)
    ar = torch.arange(w, device=x.device)
    cols = dx[:, None] + torch.where(flip[:, None], w - 1 - ar, ar)  # (n, w)
    i_n = torch.arange(n, device=x.device).view(n, 1, 1, 1)
    i_c = torch.arange(c, device=x.device).view(1, c, 1, 1)
    return padded[i_n, i_c, rows.view(n, 1, h, 1), cols.view(n, 1, 1, w)]


class BatchSampler:
    """Index batches drawn from a generator of its own: a fresh permutation each epoch (on CPU, moved to
    device once per epoch), consecutive slices of batch_size, incomplete last slice dropped. If
    batch_size >= n: always all indices (full batch, no randomness)."""

    def __init__(self, n: int, batch_size: int, *, seed: int, device: str | torch.device = "cpu"):
        if n < 1 or batch_size < 1:
            raise BnsweepError(f"BatchSampler needs n >= 1 and batch_size >= 1, got n={n}, "
                               f"batch_size={batch_size}: use a non-empty data set and a positive batch size")
        self.n, self.batch_size = n, batch_size
        self.device = _device(device)
        self.full_batch = batch_size >= n
        self._gen = torch.Generator().manual_seed(seed)  # CPU: same order on every device
        self._perm: torch.Tensor | None = None  # None until the first batch of the first epoch
        self._pos = 0
        self._all = torch.arange(n, device=self.device) if self.full_batch else None


    def draw(self, generator: torch.Generator) -> torch.Tensor:
        """batch_size distinct positions drawn with another generator (a probe's): this sampler's stream never
        moves."""
        return torch.randperm(self.n, generator=generator)[:self.batch_size].to(self.device)
    def next(self) -> torch.Tensor:
        """LongTensor of batch_size indices on the sampler's device."""
        if self._all is not None:
            return self._all
        if self._perm is None or self._pos + self.batch_size > self.n:
            self._perm = torch.randperm(self.n, generator=self._gen).to(self.device)
            self._pos = 0
        batch = self._perm[self._pos: self._pos + self.batch_size]
        self._pos += self.batch_size
        return batch

    def state_dict(self) -> dict:
        return {
            "n": self.n, "batch_size": self.batch_size, "generator": self._gen.get_state(),
            "perm": None if self._perm is None else self._perm.cpu(), "pos": self._pos,
        }

    def load_state_dict(self, state: dict) -> None:
        if (state.get("n"), state.get("batch_size")) != (self.n, self.batch_size):
            raise BnsweepError(f"sampler checkpoint is for n={state.get('n')}, "
                               f"batch_size={state.get('batch_size')} but this run has n={self.n}, "
                               f"batch_size={self.batch_size}: resume with the same data set and batch size")
        self._gen.set_state(state["generator"])
        perm = state["perm"]
        self._perm = None if perm is None else perm.to(self.device)
        self._pos = int(state["pos"])


if __name__ == "__main__":  # `python -m bnsweep.data NAME`: find or download a data set (make's set-up step)
    import sys

    try:
        for dataset_name in sys.argv[1:]:
            print(f"{dataset_name}: {load_dataset(dataset_name).source}")
    except BnsweepError as e:
        print(f"bnsweep: {e}", file=sys.stderr)
        sys.exit(2)


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise BnsweepError(f"unknown device {name!r}: use cpu, cuda, cuda:N or auto") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise BnsweepError(f"device {name!r} requested but no CUDA GPU is available: use --device cpu")
    return device


Index = torch.Tensor


def fixed_subsets(n_train: int, n_test: int, *, train_subset: int | None, eval_subset: int, test_subset: int | None,
                  data_seed: int, device: torch.device) -> tuple[Index | None, Index, Index | None]:
    """A trial's fixed example indices, sorted, fixed by data_seed (not the trial's seed), each from its own stream:
    the training subset (train_subset: batches are drawn from it and evaluations read it; None: every example),
    the evaluation subset of the training examples, and the test subset (None: the whole test set). A fixed test
    subset makes evaluations cheap where they dominate a short trial (cpu scale); own streams keep each subset the
    same with or without the others, as it was before they existed."""
    train_index, n = None, n_train
    if train_subset is not None and train_subset < n:
        pick = torch.Generator().manual_seed(stream_seed(data_seed, "train_subset"))
        train_index = torch.randperm(n, generator=pick)[:train_subset].sort().values.to(device)
        n = train_subset
    subset = torch.randperm(n, generator=torch.Generator().manual_seed(data_seed))[:eval_subset].to(device)
    eval_index = (subset if train_index is None else train_index[subset]).sort().values
    test = torch.randperm(n_test, generator=torch.Generator().manual_seed(stream_seed(data_seed, "test")))
    test_index = test[:test_subset].sort().values.to(device) if test_subset is not None and test_subset < n_test \
        else None
    return train_index, eval_index, test_index

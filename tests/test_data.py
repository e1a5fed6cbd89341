"""bnsweep.data on real files in real formats: fake CIFAR-10 pickles and the Debian Fashion-MNIST."""

import gzip
import io
import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from bnsweep import data as D
from bnsweep.data import DATASETS, BatchSampler, augment, data_root, load_dataset
from bnsweep.errors import BnsweepError

FMNIST_DEBIAN = Path("/usr/share/datasets/fashion-mnist")  # CI installs dataset-fashion-mnist


def write_fake_cifar(root: Path, n_train: int = 40, n_test: int = 50, seed: int = 0) -> dict[str, dict]:
    """Random images in CIFAR-10's exact on-disk format (torchvision's cifar-10-batches-py)."""
    rng = np.random.default_rng(seed)
    d = root / "cifar-10-batches-py"
    d.mkdir(parents=True, exist_ok=True)
    batches = {}
    for name, n in [(f"data_batch_{i}", n_train) for i in range(1, 6)] + [("test_batch", n_test)]:
        batch = {
            b"batch_label": f"{name} of 6".encode(),
            b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
            b"labels": rng.integers(0, 10, n).tolist(),
            b"filenames": [f"img_{name}_{i}.png".encode() for i in range(n)],
        }
        with open(d / name, "wb") as f:
            pickle.dump(batch, f, protocol=2)
        batches[name] = batch
    meta = {b"label_names": [f"class{i}".encode() for i in range(10)], b"num_cases_per_batch": n_train,
            b"num_vis": 3072}
    with open(d / "batches.meta", "wb") as f:
        pickle.dump(meta, f, protocol=2)
    return batches


def normalized(raw: int, mean: float, std: float) -> torch.Tensor:
    return (torch.tensor(raw, dtype=torch.float32) / 255 - mean) / std


# ---------------------------------------------------------------- CIFAR-10


def test_cifar_fake_batches_load(tmp_path):
    batches = write_fake_cifar(tmp_path)
    ds = load_dataset("cifar10", root=tmp_path, download=False)
    assert (ds.name, ds.task, ds.num_outputs) == ("cifar10", "classification", 10)
    assert ds.train_x.shape == (200, 3, 32, 32) and ds.test_x.shape == (50, 3, 32, 32)
    assert ds.in_shape == (3, 32, 32)
    assert ds.train_x.dtype == torch.uint8 and ds.train_y.dtype == torch.int64  # normalized per batch
    assert ds.inputs(ds.train_x).dtype == torch.float32
    want_train_y = sum((batches[f"data_batch_{i}"][b"labels"] for i in range(1, 6)), [])
    assert ds.train_y.tolist() == want_train_y
    assert ds.test_y.tolist() == batches["test_batch"][b"labels"]
    assert str(tmp_path / "cifar-10-batches-py") in ds.source
    # Pixel (channel 1, row 5, col 7) of image 3 of data_batch_2 is train image 43; rows are CHW row-major.
    raw = int(batches["data_batch_2"][b"data"][3, 1 * 1024 + 5 * 32 + 7])
    got = ds.inputs(ds.train_x)[40 + 3, 1, 5, 7]
    assert torch.isclose(got, normalized(raw, D.CIFAR_MEAN[1], D.CIFAR_STD[1]), atol=1e-6)
    raw = int(batches["test_batch"][b"data"][49, 2 * 1024 + 31 * 32 + 0])
    got = ds.inputs(ds.test_x)[49, 2, 31, 0]
    assert torch.isclose(got, normalized(raw, D.CIFAR_MEAN[2], D.CIFAR_STD[2]), atol=1e-6)


def test_cifar_checksum_stable_and_sensitive_to_one_byte(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    batches = write_fake_cifar(a)
    write_fake_cifar(b)  # same seed: same bytes in another place
    first = load_dataset("cifar10", root=a, download=False).checksum
    assert len(first) == 16 and int(first, 16) >= 0
    assert load_dataset("cifar10", root=a, download=False).checksum == first
    assert load_dataset("cifar10", root=b, download=False).checksum == first

    # Change one pixel byte of test_batch in place; the in-process cache must notice.
    batch = batches["test_batch"]
    batch[b"data"][-1, -1] ^= 1  # the very last pixel byte
    path = a / "cifar-10-batches-py" / "test_batch"
    old = path.stat().st_mtime_ns
    with open(path, "wb") as f:
        pickle.dump(batch, f, protocol=2)
    os.utime(path, ns=(old + 10**9, old + 10**9))  # coarse file clocks could otherwise give the same mtime
    changed = load_dataset("cifar10", root=a, download=False)
    assert changed.checksum != first
    assert torch.isclose(changed.inputs(changed.test_x)[-1, 2, 31, 31],
                         normalized(int(batch[b"data"][-1, -1]), D.CIFAR_MEAN[2], D.CIFAR_STD[2]), atol=1e-6)


def test_cifar_missing_without_download_names_path(tmp_path):
    with pytest.raises(BnsweepError) as e:
        load_dataset("cifar10", root=tmp_path, download=False)
    assert str(tmp_path / "cifar-10-batches-py") in str(e.value)
    assert "BNSWEEP_DATA" in str(e.value)


def test_cifar_missing_uses_env_root(tmp_path, monkeypatch):
    monkeypatch.setenv("BNSWEEP_DATA", str(tmp_path / "envroot"))
    with pytest.raises(BnsweepError, match="envroot"):
        load_dataset("cifar10", download=False)


def test_cifar_failed_download_is_a_clean_error(tmp_path, monkeypatch):
    import torchvision

    def offline(*args, **kwargs):
        raise OSError("no network")

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", offline)
    with pytest.raises(BnsweepError) as e:
        load_dataset("cifar10", root=tmp_path, download=True)
    msg = str(e.value)
    assert str(tmp_path / "cifar-10-batches-py") in msg and "could not be downloaded" in msg


def test_cifar_download_runs_under_lock_then_loads(tmp_path, monkeypatch):
    import torchvision

    calls = []

    def fake_download(root, train=True, download=False):
        assert download and (Path(root) / ".bnsweep-download.lock").exists()
        calls.append(root)
        write_fake_cifar(Path(root), n_train=4, n_test=5)

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", fake_download)
    ds = load_dataset("cifar10", root=tmp_path, download=True)
    assert ds.train_x.shape == (20, 3, 32, 32) and len(calls) == 1
    load_dataset("cifar10", root=tmp_path, download=True)
    assert len(calls) == 1  # present now: no second download


def test_cifar_corrupt_batch_is_a_clean_error(tmp_path):
    write_fake_cifar(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").write_bytes(b"not a pickle")
    with pytest.raises(BnsweepError, match="data_batch_3"):
        load_dataset("cifar10", root=tmp_path, download=False)


def _rewrite_batch(path: Path, **entries) -> None:
    """The batch at `path` with some entries replaced (protocol 4: protocol 2 writes empty bytes as a call of
    bytes(), which the loader refuses as not part of a batch before it sees the array)."""
    with open(path, "rb") as f:
        batch = pickle.load(f, encoding="bytes")
    batch.update({k.encode(): v for k, v in entries.items()})
    with open(path, "wb") as f:
        pickle.dump(batch, f, protocol=4)


@pytest.mark.parametrize("entries, words", [
    ({"data": np.zeros((0, 3072), np.uint8), "labels": []}, ["(0, 3072)", "1 to 10,000 rows"]),
    ({"data": np.zeros((0,), np.uint8), "labels": []}, ["(0,)"]),
    ({"data": np.full((40, 3072), 300, np.int64)}, ["int64", "uint8"]),
    ({"data": np.zeros((40, 3000), np.uint8)}, ["(40, 3000)"]),
    ({"data": np.zeros((40, 3072), np.uint8).tolist()}, ["list"]),
    ({"labels": [1.5] * 40}, ["labels", "float64"]),
    ({"labels": [1] * 39}, ["labels (39,)", "40 images"]),
])
def test_a_cifar_batch_of_the_wrong_shape_or_type_is_refused(tmp_path, entries, words):
    """Empty arrays loaded as an empty data set, int64 pixels and float labels were cast into shape silently."""
    write_fake_cifar(tmp_path)
    _rewrite_batch(tmp_path / "cifar-10-batches-py" / "data_batch_2", **entries)
    with pytest.raises(BnsweepError) as e:
        load_dataset("cifar10", root=tmp_path, download=False)
    assert "\n" not in str(e.value) and "data_batch_2" in str(e.value)
    for word in words:
        assert word in str(e.value), (word, str(e.value))


def test_a_cifar_batch_larger_than_any_real_one_is_not_read(tmp_path, monkeypatch):
    write_fake_cifar(tmp_path)
    monkeypatch.setattr(D, "MAX_CIFAR_BATCH_BYTES", 1000)  # the fake batches are 120 kB; real ones 31 MB
    with pytest.raises(BnsweepError, match="data_batch_1 is .* bytes, more than a batch"):
        load_dataset("cifar10", root=tmp_path, download=False)


# ---------------------------------------------------------------- misc


def test_unknown_dataset_message():
    with pytest.raises(BnsweepError) as e:
        load_dataset("foo")
    assert str(e.value) == "unknown dataset 'foo': choose one of cifar10, fashion-mnist, gaussian-linear, quadratic"
    assert DATASETS == ("cifar10", "fashion-mnist", "gaussian-linear", "quadratic")


def test_bad_device_and_seed_are_clean_errors():
    with pytest.raises(BnsweepError, match="nonsense"):
        load_dataset("gaussian-linear", device="nonsense")
    with pytest.raises(BnsweepError, match="data_seed"):
        load_dataset("gaussian-linear", data_seed=-1)


def test_data_root(tmp_path, monkeypatch):
    monkeypatch.delenv("BNSWEEP_DATA", raising=False)
    assert data_root() is None
    assert data_root(tmp_path) == tmp_path
    monkeypatch.setenv("BNSWEEP_DATA", str(tmp_path / "env"))
    assert data_root() == tmp_path / "env"
    assert data_root(tmp_path / "x") == tmp_path / "x"  # explicit wins over the environment


# ---------------------------------------------------------------- Fashion-MNIST


def write_idx(path: Path, arr: np.ndarray, magic: int, compress: bool) -> None:
    header = magic.to_bytes(4, "big") + b"".join(int(s).to_bytes(4, "big") for s in arr.shape)
    raw = header + arr.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(raw, compresslevel=1) if compress else raw)


def test_fmnist_missing_lists_every_place(tmp_path, monkeypatch):
    nowhere = tmp_path / "no-debian"
    monkeypatch.setattr(D, "DEBIAN_FASHION_MNIST", nowhere)
    bogus = tmp_path / "bogus"
    monkeypatch.setenv("BNSWEEP_DATA", str(bogus))  # a default root: the Debian copy is still looked for
    with pytest.raises(BnsweepError) as e:
        load_dataset("fashion-mnist", download=False)
    msg = str(e.value)
    assert str(bogus) in msg and str(bogus / "FashionMNIST" / "raw") in msg and str(nowhere) in msg
    assert "apt-get install dataset-fashion-mnist" in msg


def test_an_explicit_data_root_without_fashion_mnist_does_not_fall_back_to_debian(tmp_path):
    # --data-root names the one place to read: a user who gives it must not silently get another copy.
    assert FMNIST_DEBIAN.is_dir()
    with pytest.raises(BnsweepError) as e:
        load_dataset("fashion-mnist", root=tmp_path, download=False)
    assert str(tmp_path) in str(e.value) and str(FMNIST_DEBIAN) not in str(e.value)


def test_fmnist_tiny_flat_plain_files(tmp_path):
    rng = np.random.default_rng(1)
    tr_x, te_x = rng.integers(1, 256, (7, 28, 28)), rng.integers(1, 256, (3, 28, 28))
    tr_y, te_y = rng.integers(0, 10, 7), rng.integers(0, 10, 3)
    write_idx(tmp_path / "train-images-idx3-ubyte", tr_x, 2051, compress=False)
    write_idx(tmp_path / "train-labels-idx1-ubyte", tr_y, 2049, compress=False)
    write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", te_x, 2051, compress=True)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", te_y, 2049, compress=True)
    ds = load_dataset("fashion-mnist", root=tmp_path, download=False)
    assert ds.train_x.shape == (7, 1, 32, 32) and ds.test_x.shape == (3, 1, 32, 32)
    assert ds.train_y.tolist() == tr_y.tolist() and ds.test_y.tolist() == te_y.tolist()
    m, s = D.FMNIST_MEAN[0], D.FMNIST_STD[0]
    assert torch.isclose(ds.inputs(ds.train_x)[5, 0, 2 + 3, 2 + 27], normalized(int(tr_x[5, 3, 27]), m, s), atol=1e-6)
    assert torch.isclose(ds.inputs(ds.test_x)[2, 0, 2, 2], normalized(int(te_x[2, 0, 0]), m, s), atol=1e-6)
    assert torch.isclose(ds.inputs(ds.train_x)[0, 0, 1, 2], normalized(0, m, s), atol=1e-6)  # padding

    write_idx(tmp_path / "train-labels-idx1-ubyte", tr_y, 2051, compress=False)  # wrong magic
    with pytest.raises(BnsweepError, match="magic 2049"):
        load_dataset("fashion-mnist", root=tmp_path, download=False)


def write_tiny_fmnist(root: Path) -> None:
    rng = np.random.default_rng(2)
    for stem, n, magic in (("train", 7, 2051), ("t10k", 3, 2051)):
        write_idx(root / f"{stem}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28)), magic, compress=False)
        write_idx(root / f"{stem}-labels-idx1-ubyte", rng.integers(0, 10, n), 2049, compress=False)


def forge_idx(path: Path, magic: int, shape: tuple[int, ...], payload: bytes, compress: bool) -> None:
    """An idx file whose header declares `shape` but holds `payload`."""
    raw = magic.to_bytes(4, "big") + b"".join(n.to_bytes(4, "big") for n in shape) + payload
    path.write_bytes(gzip.compress(raw, compresslevel=1) if compress else raw)


FORGED = {  # name: (file, magic, declared shape, payload bytes, gzipped, words of the error)
    "2^31 cube of images": ("train-images-idx3-ubyte", 2051, (2**31 - 1,) * 3, b"\0" * 64, False,
                            ["2147483647 x 2147483647 x 2147483647", "60,000"]),
    "2^31 cube, gzipped": ("train-images-idx3-ubyte", 2051, (2**31 - 1,) * 3, b"\0" * 64, True,
                           ["2147483647 x 2147483647 x 2147483647"]),
    "3 TB of images": ("t10k-images-idx3-ubyte", 2051, (2**32 - 1, 28, 28), b"\0" * 64, True, ["4294967295 x 28"]),
    "4 billion labels": ("t10k-labels-idx1-ubyte", 2049, (2**32 - 1,), b"\1" * 3, True, ["4294967295", "10,000"]),
    "images of another size": ("t10k-images-idx3-ubyte", 2051, (3, 2**16, 2**16), b"\0" * 64, False, ["65536"]),
    "more rows than the data set": ("train-images-idx3-ubyte", 2051, (60_001, 28, 28), b"\0" * 64, True,
                                    ["60001 x 28 x 28"]),
    "no rows": ("train-labels-idx1-ubyte", 2049, (0,), b"", False, ["shape 0"]),
}


@pytest.mark.parametrize("name", FORGED)
def test_a_forged_fmnist_header_is_refused_before_allocating(tmp_path, name):
    """A header's declared shape is checked against the data set's before the array is allocated: a (2^31 - 1)-cubed
    declaration was a numpy ValueError (a traceback), 3 TB a MemoryError, a merely large one an allocation of its
    size."""
    stem, magic, shape, payload, compress, words = FORGED[name]
    write_tiny_fmnist(tmp_path)
    forge_idx(tmp_path / (stem + (".gz" if compress else "")), magic, shape, payload, compress)
    if compress:
        (tmp_path / stem).unlink()
    with pytest.raises(BnsweepError) as e:
        load_dataset("fashion-mnist", root=tmp_path, download=False)
    assert "\n" not in str(e.value) and stem in str(e.value) and "replace it" in str(e.value)
    for word in words:
        assert word in str(e.value), (word, str(e.value))


def test_a_header_that_does_not_match_the_file_size_allocates_nothing(tmp_path):
    """A plain file declaring the full 60,000 images but holding 64 bytes: refused from its size, before the
    47 MB array the header asks for exists (traced: numpy reports its allocations to tracemalloc)."""
    import tracemalloc

    write_tiny_fmnist(tmp_path)
    forge_idx(tmp_path / "train-images-idx3-ubyte", 2051, (60_000, 28, 28), b"\0" * 64, compress=False)
    tracemalloc.start()
    try:
        with pytest.raises(BnsweepError, match="truncated or padded.*train-images|train-images.*truncated"):
            load_dataset("fashion-mnist", root=tmp_path, download=False)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 10 * 2**20, peak


def test_a_forged_fmnist_header_through_the_cli_is_one_line(tmp_path, capsys):
    from bnsweep.cli import main

    write_tiny_fmnist(tmp_path)
    forge_idx(tmp_path / "train-images-idx3-ubyte", 2051, (2**31 - 1,) * 3, b"\0" * 64, compress=False)
    code = main(["trial", "--arch", "vgg11", "--width", "0.0625", "--lr", "0.1", "--steps", "1", "--device", "cpu",
                 "--dataset", "fashion-mnist", "--data-root", str(tmp_path), "--results", str(tmp_path / "r")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "train-images-idx3-ubyte" in err[0] and "Traceback" not in err[0], err


@pytest.fixture(scope="module")
def fmnist():
    return load_dataset("fashion-mnist", download=False)


def test_fmnist_debian_files(fmnist, monkeypatch):
    ds = fmnist
    assert ds.source == str(FMNIST_DEBIAN)
    assert ds.train_x.shape == (60000, 1, 32, 32) and ds.test_x.shape == (10000, 1, 32, 32)
    assert ds.train_y.shape == (60000,) and ds.test_y.shape == (10000,) and ds.train_y.dtype == torch.int64
    assert ds.in_shape == (1, 32, 32) and ds.num_outputs == 10
    zero = normalized(0, D.FMNIST_MEAN[0], D.FMNIST_STD[0])
    for x in (ds.inputs(ds.train_x), ds.inputs(ds.test_x)):
        border = torch.cat([x[..., :2, :].flatten(), x[..., 30:, :].flatten(),
                            x[..., :, :2].flatten(), x[..., :, 30:].flatten()])
        assert torch.allclose(border, zero.expand_as(border), atol=1e-6, rtol=0)
        assert torch.isclose(x.max(), normalized(255, D.FMNIST_MEAN[0], D.FMNIST_STD[0]), atol=1e-5)
    counts = torch.bincount(ds.train_y, minlength=10)
    assert len(counts) == 10 and ((counts - 6000).abs() <= 300).all()
    assert ((torch.bincount(ds.test_y, minlength=10) - 1000).abs() <= 100).all()
    # unpadded images normalized with these constants are ~N(0,1); the zero border pulls the mean down
    inner = ds.inputs(ds.train_x[:2000])[:, :, 2:30, 2:30]
    assert abs(inner.mean().item()) < 0.1 and abs(inner.std().item() - 1) < 0.1
    assert load_dataset("fashion-mnist", download=False).checksum == ds.checksum


def test_fmnist_torchvision_layout(fmnist, tmp_path):
    raw = tmp_path / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for stem in D.FMNIST_FILES:
        src = FMNIST_DEBIAN / (stem + ".gz")
        if stem.startswith("train"):  # torchvision keeps the un-gzipped files; exercise both forms
            (raw / stem).write_bytes(gzip.decompress(src.read_bytes()))
        else:
            shutil.copy(src, raw / (stem + ".gz"))
    ds = load_dataset("fashion-mnist", root=tmp_path, download=False)
    assert ds.source == str(raw)
    assert ds.checksum == fmnist.checksum  # checksum is over the parsed bytes, not the compression
    assert torch.equal(ds.train_x, fmnist.train_x) and torch.equal(ds.test_y, fmnist.test_y)


# ---------------------------------------------------------------- gaussian-linear


def test_gaussian_linear():
    ds = load_dataset("gaussian-linear", data_seed=3)
    assert (ds.task, ds.num_outputs, ds.source) == ("regression", 10, "generated (data_seed=3)")
    for t in (ds.train_x, ds.train_y, ds.test_x, ds.test_y):
        assert t.shape == (1000, 10) and t.dtype == torch.float32
    again = load_dataset("gaussian-linear", data_seed=3)
    assert torch.equal(again.train_x, ds.train_x) and torch.equal(again.test_y, ds.test_y)
    assert again.checksum == ds.checksum
    other = load_dataset("gaussian-linear", data_seed=4)
    assert not torch.equal(other.train_x, ds.train_x) and other.checksum != ds.checksum
    # One linear map for train and test: recover it from train, it predicts test.
    a_t = torch.linalg.lstsq(ds.train_x.double(), ds.train_y.double()).solution
    assert torch.allclose(ds.test_x.double() @ a_t, ds.test_y.double(), atol=1e-4)
    assert torch.allclose(ds.train_x.double() @ a_t, ds.train_y.double(), atol=1e-4)
    a_other = torch.linalg.lstsq(other.train_x.double(), other.train_y.double()).solution
    assert not torch.allclose(a_t, a_other, atol=1e-2)
    assert ds.train_x.std().item() == pytest.approx(1, abs=0.1)


# ---------------------------------------------------------------- BatchSampler


def take(sampler: BatchSampler, k: int) -> list[list[int]]:
    return [sampler.next().tolist() for _ in range(k)]


def test_sampler_deterministic_epochs_are_permutations():
    n, bs = 103, 10
    a, b = BatchSampler(n, bs, seed=5), BatchSampler(n, bs, seed=5)
    seq = take(a, 30)
    assert seq == take(b, 30)
    assert seq != take(BatchSampler(n, bs, seed=6), 30)
    for e in range(3):  # 10 full batches per epoch, the last 3 indices dropped
        epoch = sum(seq[10 * e: 10 * e + 10], [])
        assert len(epoch) == 100 and len(set(epoch)) == 100 and all(0 <= i < n for i in epoch)
    assert set(sum(seq[0:10], [])) != set(sum(seq[10:20], []))  # a fresh permutation each epoch
    idx = BatchSampler(n, bs, seed=5).next()
    assert idx.dtype == torch.int64 and idx.shape == (bs,)


def test_sampler_state_dict_round_trip():
    a = BatchSampler(50, 8, seed=1)
    take(a, 9)  # mid second epoch
    buf = io.BytesIO()
    torch.save(a.state_dict(), buf)  # what a checkpoint does
    expected = take(a, 20)
    b = BatchSampler(50, 8, seed=999)
    b.load_state_dict(torch.load(io.BytesIO(buf.getvalue())))
    assert take(b, 20) == expected

    fresh = BatchSampler(50, 8, seed=2)
    state = fresh.state_dict()  # before the first batch
    c = BatchSampler(50, 8, seed=3)
    c.load_state_dict(state)
    assert take(c, 10) == take(fresh, 10)
    with pytest.raises(BnsweepError, match="batch_size"):
        BatchSampler(50, 16, seed=1).load_state_dict(a.state_dict())


def test_sampler_full_batch():
    for bs in (40, 64):
        s = BatchSampler(40, bs, seed=0)
        for _ in range(3):
            assert torch.equal(s.next(), torch.arange(40))
    with pytest.raises(BnsweepError):
        BatchSampler(10, 0, seed=0)


# ---------------------------------------------------------------- augment


def test_augment_crops_and_flips():
    n = 400
    # Every pixel holds its own 1-based position, so the output tells which crop and flip produced it.
    x = (torch.arange(32 * 32, dtype=torch.float32) + 1).view(1, 1, 32, 32).repeat(n, 2, 1, 1)
    x_before = x.clone()
    out = augment(x, torch.Generator().manual_seed(0))
    assert out.shape == x.shape and out.dtype == x.dtype
    assert torch.equal(x, x_before)  # pure
    assert torch.equal(out, augment(x, torch.Generator().manual_seed(0)))
    assert not torch.equal(out, augment(x, torch.Generator().manual_seed(1)))

    padded = torch.nn.functional.pad(x, (4, 4, 4, 4))
    flips, shifts = 0, set()
    for i in range(n):
        r, c = divmod(int(out[i, 0, 16, 16].item()) - 1, 32)  # the center pixel is never padding
        flipped = out[i, 0, 16, 15].item() - out[i, 0, 16, 16].item() == 1
        dy, dx = r - 12, c - (11 if flipped else 12)  # crop window offset into the padded image
        assert 0 <= dy <= 8 and 0 <= dx <= 8
        want = padded[i, :, dy:dy + 32, dx:dx + 32]
        assert torch.equal(out[i], want.flip(-1) if flipped else want)
        flips += flipped
        shifts.add((dy, dx))
    assert 150 < flips < 250  # about half
    assert len(shifts) > 50  # crops move content around (81 possible offsets)
    with pytest.raises(BnsweepError):
        augment(x[0], torch.Generator())


class _RunsCode:
    """Unpickling this runs code: it writes a marker file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "code ran"))


def test_a_cifar_batch_that_would_run_code_is_refused_and_the_code_does_not_run(tmp_path):
    write_fake_cifar(tmp_path)
    marker = tmp_path / "pwned"
    path = tmp_path / "cifar-10-batches-py" / "data_batch_3"
    with open(path, "wb") as f:
        pickle.dump({b"data": _RunsCode(marker), b"labels": [0]}, f, protocol=2)
    with pytest.raises(BnsweepError, match="data_batch_3") as e:
        load_dataset("cifar10", root=tmp_path, download=False)
    assert "is not part of a CIFAR-10 batch" in str(e.value) and not marker.exists()


def test_images_stay_uint8_and_normalize_per_batch_exactly_as_the_whole_set(fmnist):
    # Normalizing a batch gives bit for bit what normalizing the whole set at load gave (the same float ops).
    whole = fmnist.train_x[:512].float().div(255).sub(fmnist.mean).div(fmnist.std)
    index = torch.tensor([3, 0, 511, 7])
    assert torch.equal(fmnist.inputs(fmnist.train_x[index]), whole[index])
    assert fmnist.train_x.element_size() == 1  # a quarter of float32's memory
    x = torch.randn(4, 10)
    assert fmnist.inputs(x) is x  # float data (generated sets) pass through

"""Tests for jaxgen.data: IDX reading, TFDS preparation, and the grain loader contract."""

import json
import os
import re
import time

import numpy as np
import pytest
from conftest import write_idx

from jaxgen import data
from jaxgen.data import idx

N_TRAIN, N_TEST = 40, 12


def images(n: int, offset: int = 0) -> np.ndarray:
  """[n, 28, 28] images whose pixels all equal offset + index."""
  return np.broadcast_to((offset + np.arange(n, dtype=np.uint8))[:, None, None], (n, 28, 28)).copy()


def ids(batch) -> np.ndarray:
  """Example indices encoded in the pixels of a scaled batch."""
  return np.rint((batch["image"][:, 0, 0, 0] + 1) * 127.5).astype(int)


@pytest.fixture(scope="module")
def idx_dir(tmp_path_factory):
  """Train split gzipped, test split raw with the dotted spelling."""
  d = tmp_path_factory.mktemp("idx")
  write_idx(d / "train-images-idx3-ubyte.gz", images(N_TRAIN))
  write_idx(d / "train-labels-idx1-ubyte.gz", np.arange(N_TRAIN, dtype=np.uint8) % 10)
  write_idx(d / "t10k-images.idx3-ubyte", images(N_TEST, offset=100))
  write_idx(d / "t10k-labels.idx1-ubyte", np.arange(N_TEST, dtype=np.uint8) % 10)
  return d


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp("tfds"))


def synthetic(n: int = N_TRAIN):
  return [{"image": np.full((28, 28, 1), i, np.uint8), "label": i % 10} for i in range(n)]


def take(loader, k: int) -> list:
  return [next(loader) for _ in range(k)]


# --- IDX reading -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["x-images-idx3-ubyte.gz", "x-images-idx3-ubyte"])
def test_read_idx_round_trip(tmp_path, name):
  imgs = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
  write_idx(tmp_path / name, imgs)
  np.testing.assert_array_equal(data.read_idx(tmp_path / name), imgs)
  labels = np.array([3, 1, 4], np.uint8)
  write_idx(tmp_path / "l.gz", labels)
  np.testing.assert_array_equal(data.read_idx(tmp_path / "l.gz"), labels)


def _bad_magic(p):
  write_idx(p, images(3), magic=0x0D03)  # 0x0d = float32 type code, not uint8


def _truncated_raw(p):
  write_idx(p, images(3))
  p.write_bytes(p.read_bytes()[: 16 + 100])


def _truncated_gz(p):
  write_idx(
    p.with_suffix(".tmp.gz"), np.random.default_rng(0).integers(0, 256, (50, 28, 28), np.uint8)
  )
  p.write_bytes(p.with_suffix(".tmp.gz").read_bytes()[:2000])


@pytest.mark.parametrize(
  "make,name,words",
  [
    (_bad_magic, "imgs-idx3-ubyte", "magic 0x00000d03"),
    (_truncated_raw, "imgs-idx3-ubyte", "expected 2352 bytes of pixels, found 100"),
    (_truncated_gz, "imgs-idx3-ubyte.gz", "truncated"),
    (None, "missing-idx3-ubyte.gz", "apt-get install dataset-fashion-mnist"),
  ],
)
def test_read_idx_errors(tmp_path, make, name, words):
  p = tmp_path / name
  if make:
    make(p)
  with pytest.raises(data.DataError) as e:
    data.read_idx(p)
  msg = str(e.value)
  assert str(p) in msg and words in msg and "\n" not in msg
  assert isinstance(e.value, ValueError)


def test_bad_folder_fails_before_preparing(tmp_path, idx_dir):
  bad = tmp_path / "bad"
  bad.mkdir()
  for f in idx_dir.iterdir():
    (bad / f.name).write_bytes(f.read_bytes())
  _truncated_raw(bad / "t10k-images.idx3-ubyte")
  dd = tmp_path / "tfds"
  with pytest.raises(data.DataError, match="t10k-images.idx3-ubyte is truncated"):
    data.load("idx", "train", source_dir=str(bad), data_dir=str(dd))
  assert not list(dd.glob("idx_images/*/1.0.0"))
  with pytest.raises(data.DataError, match="data.source_dir"):
    data.load("idx", "train", source_dir=str(tmp_path / "nowhere"), data_dir=str(dd))


# --- preparation and load ----------------------------------------------------------------------


def test_load_idx(idx_dir, data_dir):
  train, info = data.load("idx", "train", source_dir=str(idx_dir), data_dir=data_dir)
  test, _ = data.load("idx", "test", source_dir=str(idx_dir), data_dir=data_dir)
  assert info.image_shape == (28, 28, 1) and info.num_classes == 10
  assert info.class_names == tuple("0123456789")
  assert info.num_examples == {"train": N_TRAIN, "test": N_TEST}
  assert len(train) == N_TRAIN and len(test) == N_TEST
  # Source order is file order.
  assert [int(train[i]["image"][0, 0, 0]) for i in range(N_TRAIN)] == list(range(N_TRAIN))
  assert [int(test[i]["label"]) for i in range(N_TEST)] == [i % 10 for i in range(N_TEST)]
  assert test[3]["image"].dtype == np.uint8 and test[3]["image"].shape == (28, 28, 1)
  _, finfo = data.load("fashion_mnist", "test", source_dir=str(idx_dir), data_dir=data_dir)
  assert finfo.class_names[0] == "T-shirt/top" and finfo.class_names[-1] == "Ankle boot"
  # Prepared IDX data sets are also readable through the stock-TFDS path.
  cfg = data.idx_config(idx_dir)
  stock, sinfo = data.load(f"idx_images/{cfg.name}", "test", data_dir=data_dir)
  assert len(stock) == N_TEST and sinfo.num_classes == 10


def test_interrupted_prepare_is_not_mistaken_for_done(idx_dir, tmp_path, monkeypatch):
  dd = str(tmp_path / "tfds")
  real = data.IdxImages._generate_examples

  def dies_midway(self, images_path, labels_path):
    for i, ex in enumerate(real(self, images_path, labels_path)):
      if i == 5:
        raise KeyboardInterrupt
      yield ex

  monkeypatch.setattr(data.IdxImages, "_generate_examples", dies_midway)
  with pytest.raises(KeyboardInterrupt):
    data.load("idx", "train", source_dir=str(idx_dir), data_dir=dd)
  monkeypatch.setattr(data.IdxImages, "_generate_examples", real)
  src, info = data.load("idx", "train", source_dir=str(idx_dir), data_dir=dd)
  assert len(src) == N_TRAIN and info.num_examples["test"] == N_TEST


def test_preparing_says_what_happens_and_claims_no_download(idx_dir, tmp_path, capfd):
  dd = tmp_path / "tfds"
  data.load("idx", "train", source_dir=str(idx_dir), data_dir=str(dd))
  out, err = capfd.readouterr()
  prepared = dd / "idx_images" / data.idx_config(idx_dir).name / "1.0.0"
  lines = out.splitlines()
  assert lines[0] == (
    f"{prepared.parent.name}: converting the images and labels from the IDX "
    f"files in {idx_dir} into array_record in {prepared}, once"
  )
  assert re.fullmatch(
    rf"{prepared.parent.name}: prepared in \d+\.\ds \(train {N_TRAIN}, test "
    rf"{N_TEST}\); later runs read it from there",
    lines[1],
  )
  assert "download" not in (out + err).lower()  # TFDS's "Downloading and preparing dataset"
  data.load("idx", "test", source_dir=str(idx_dir), data_dir=str(dd))
  assert capfd.readouterr().out == ""  # prepared once


def test_unprepared_stock_dataset_raises(tmp_path):
  with pytest.raises(data.DataError) as e:
    data.load("mnist", "train", data_dir=str(tmp_path))
  msg = str(e.value)
  assert "'mnist'" in msg and str(tmp_path) in msg and "array_record" in msg and "\n" not in msg


# --- loader ------------------------------------------------------------------------------------


def test_loader_batches_scaled(idx_dir, data_dir):
  src, _ = data.load("idx", "train", source_dir=str(idx_dir), data_dir=data_dir)
  batch = next(data.make_loader(src, batch_size=8, seed=0))
  assert batch["image"].shape == (8, 28, 28, 1) and batch["image"].dtype == np.float32
  assert batch["label"].shape == (8,) and batch["label"].dtype == np.int32
  assert batch["image"].min() >= -1 and batch["image"].max() <= 1
  np.testing.assert_array_equal(batch["label"], ids(batch) % 10)
  full = np.stack([np.full((28, 28, 1), 0), np.full((28, 28, 1), 255)]).astype(np.uint8)
  scaled = next(
    data.make_loader([{"image": x, "label": 0} for x in full], batch_size=2, seed=0, shuffle=False)
  )["image"]
  assert scaled.min() == -1.0 and scaled.max() == 1.0


def test_seed_determinism():
  src = synthetic()
  a = np.concatenate([ids(b) for b in take(data.make_loader(src, batch_size=8, seed=1), 5)])
  b = np.concatenate([ids(b) for b in take(data.make_loader(src, batch_size=8, seed=1), 5)])
  c = np.concatenate([ids(b) for b in take(data.make_loader(src, batch_size=8, seed=2), 5)])
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(a, c)
  assert sorted(a) == list(range(N_TRAIN)) and not np.array_equal(a, np.arange(N_TRAIN))


def test_epochs_are_different_permutations():
  loader = data.make_loader(synthetic(), batch_size=8, seed=0, num_epochs=3)
  assert loader.batches_per_epoch == 5
  order = np.concatenate([ids(b) for b in loader])  # finite: stops after 3 epochs
  assert len(order) == 3 * N_TRAIN
  epochs = order.reshape(3, N_TRAIN)
  for e in epochs:
    assert sorted(e) == list(range(N_TRAIN))
  assert not np.array_equal(epochs[0], epochs[1]) and not np.array_equal(epochs[1], epochs[2])


def test_unshuffled_keeps_order_and_partial_batch():
  batches = list(
    data.make_loader(
      synthetic(10), batch_size=4, seed=0, shuffle=False, num_epochs=1, drop_remainder=False
    )
  )
  assert [list(ids(b)) for b in batches] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]


@pytest.mark.parametrize("batch_size,process_count", [(8, 2), (12, 4)])
def test_process_slices_concatenate_to_global_batch(batch_size, process_count):
  src = synthetic()
  steps = 3 * (N_TRAIN // batch_size) + 1  # crosses two epoch boundaries
  whole = take(data.make_loader(src, batch_size=batch_size, seed=3), steps)
  parts = [
    take(
      data.make_loader(
        src, batch_size=batch_size, seed=3, process_index=p, process_count=process_count
      ),
      steps,
    )
    for p in range(process_count)
  ]
  for s in range(steps):
    for key in ("image", "label"):
      assert parts[0][s][key].shape[0] == batch_size // process_count
      np.testing.assert_array_equal(np.concatenate([p[s][key] for p in parts]), whole[s][key])


def test_resume_from_state():
  src = synthetic()
  loader = data.make_loader(src, batch_size=8, seed=4)
  take(loader, 7)
  state = json.loads(json.dumps(loader.get_state()))
  expected = take(loader, 6)
  fresh = data.make_loader(src, batch_size=8, seed=4)
  fresh.set_state(state)
  for got, want in zip(take(fresh, 6), expected):
    np.testing.assert_array_equal(ids(got), ids(want))


@pytest.mark.parametrize("num_workers,prefetch", [(0, 0), (1, 1), (2, 4), (4, 16)])
def test_workers_do_not_change_the_batches(num_workers, prefetch):
  # 13 batches of 8 from 40 examples: 5 per epoch, so three epoch boundaries are crossed
  src = synthetic()
  plain = data.make_loader(src, batch_size=8, seed=5, num_workers=0, prefetch=0)
  ahead = data.make_loader(src, batch_size=8, seed=5, num_workers=num_workers, prefetch=prefetch)
  for _ in range(13):
    want, got = next(plain), next(ahead)
    assert want.keys() == got.keys()
    for k in want:
      np.testing.assert_array_equal(got[k], want[k])
    assert ahead.get_state() == plain.get_state()  # the position of the batch handed out


class _BatchedSource(list):
  """A list with a batched read (as TFDS's array_record sources have), counting its calls."""

  def __init__(self, items):
    super().__init__(items)
    self.batched_reads = 0

  def __getitems__(self, indices):
    self.batched_reads += 1
    return [self[i] for i in indices]


def test_batched_reads_give_the_batches_of_the_epoch_orders():
  # the definition: batch b of epoch e holds items epoch_order(n, seed, True, e)[b*B:(b+1)*B]
  src = _BatchedSource(synthetic())
  loader = data.make_loader(src, batch_size=8, seed=7, num_workers=0, prefetch=0)
  for i in range(13):  # 5 batches per epoch: three epoch boundaries
    epoch, b = divmod(i, 5)
    order = data.pipeline.epoch_order(N_TRAIN, 7, True, epoch)
    want = data.pipeline.to_batch([src[j] for j in order[8 * b : 8 * (b + 1)]])
    got = next(loader)
    for k in want:
      np.testing.assert_array_equal(got[k], want[k])
  assert src.batched_reads == 13  # one read per batch
  orders = [data.pipeline.epoch_order(N_TRAIN, s, True, e) for s in (7, 8) for e in (0, 1)]
  assert len({o.tobytes() for o in orders}) == 4  # seeds s, s+1 and epochs all differ


def _caption_items(n: int = N_TRAIN) -> list[dict]:
  """Items with an image, a label, integer tokens and a string name (which batches drop)."""
  return [
    dict(
      image=np.full((28, 28, 1), i, np.uint8), label=i % 10, tokens=np.arange(3) + i, name=f"n{i}"
    )
    for i in range(n)
  ]


@pytest.mark.parametrize("num_workers", [0, 2])
def test_in_memory_source_gives_the_same_batches(num_workers):
  src = _caption_items()
  mem = data.in_memory(_BatchedSource(src), chunk=7)  # chunks that do not divide the split
  assert sorted(mem.columns) == ["image", "label", "tokens"] and len(mem) == N_TRAIN
  assert mem.columns["image"].dtype == np.uint8  # stored as read, scaled per batch
  streamed = data.make_loader(src, batch_size=8, seed=3, num_workers=0, prefetch=0)
  cut = data.make_loader(mem, batch_size=8, seed=3, num_workers=num_workers)
  for _ in range(13):
    want, got = next(streamed), next(cut)
    assert want.keys() == got.keys() == {"image", "label", "tokens"}
    for k in want:
      assert got[k].dtype == want[k].dtype
      np.testing.assert_array_equal(got[k], want[k])
  assert data.in_memory(mem) is mem


def test_in_memory_refuses_a_split_larger_than_allowed():
  # 40 items of 784 + 8 bytes (image, int64 label) = 31,680 bytes
  with pytest.raises(data.DataError, match=r"set --config.data.in_memory=false to stream them"):
    data.in_memory(synthetic(), max_bytes=31_679)
  assert len(data.in_memory(synthetic(), max_bytes=31_680)) == N_TRAIN


class _Counted:
  """An iterator of a loader's batches that counts how many were drawn."""

  def __init__(self, loader):
    self.loader, self.drawn = loader, 0

  def __next__(self):
    self.drawn += 1
    return next(self.loader)

  def get_state(self):
    return self.loader.get_state()


@pytest.mark.parametrize("size", [1, 2, 3])
def test_prefetch_to_device_yields_the_same_batches_with_their_positions(size):
  import jax

  from jaxgen import parallel

  mesh = parallel.make_mesh()
  plain = data.make_loader(synthetic(), batch_size=8, seed=6)
  counted = _Counted(data.make_loader(synthetic(), batch_size=8, seed=6))
  batches = parallel.prefetch_to_device(counted, mesh, size)
  for i in range(9):
    got, position = next(batches)
    assert counted.drawn == i + size  # `size` batches on the device: this one and the next ones
    want = next(plain)
    assert position == plain.get_state() == {"next_index": i + 1}  # after this batch
    for k in want:
      assert isinstance(got[k], jax.Array) and got[k].sharding == parallel.data_sharding(mesh)
      np.testing.assert_array_equal(np.asarray(got[k]), want[k])


def test_prefetch_to_device_ends_with_its_iterator():
  import jax

  from jaxgen import parallel

  n = jax.device_count()
  local = iter([{"x": np.full((n,), i)} for i in range(3)])  # no get_state: positions are None
  out = list(parallel.prefetch_to_device(local, parallel.make_mesh(), 2))
  assert [(int(b["x"][0]), p) for b, p in out] == [(0, None), (1, None), (2, None)]
  with pytest.raises(ValueError, match="must be >= 1"):
    next(parallel.prefetch_to_device(iter([]), parallel.make_mesh(), 0))


def test_batch_size_not_divisible_by_process_count():
  with pytest.raises(ValueError, match="multiple of process_count"):
    data.make_loader(synthetic(), batch_size=10, seed=0, process_count=4)


# --- real data ---------------------------------------------------------------------------------


@pytest.mark.skipif(
  not os.path.isdir(idx.FASHION_MNIST_DIR),
  reason=f"{idx.FASHION_MNIST_DIR} absent (apt-get install dataset-fashion-mnist)",
)
def test_real_fashion_mnist(tmp_path):
  t = time.perf_counter()
  train, info = data.load("fashion_mnist", "train", data_dir=str(tmp_path))
  print(f"prepared Fashion-MNIST in {time.perf_counter() - t:.1f}s")
  test, _ = data.load("fashion_mnist", "test", data_dir=str(tmp_path))
  assert (len(train), len(test)) == (60000, 10000)
  assert info.num_examples == {"train": 60000, "test": 10000}
  assert info.image_shape == (28, 28, 1) and len(info.class_names) == 10
  assert train[0]["image"].shape == (28, 28, 1)

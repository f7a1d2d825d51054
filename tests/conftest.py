"""Test set-up: 8 simulated CPU devices (set before JAX starts) and small real-data slices."""

import gzip
import os
import struct
from pathlib import Path

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Many tests (and the CLI subprocesses, which inherit this) build the same small programs,
# e.g. a state's init: a persistent cache compiles each once per machine, not once per test.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR",
                      str(Path(__file__).resolve().parents[1] / ".pytest_cache" / "jax"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")

import chex  # noqa: E402
import jax  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

FASHION = Path("/usr/share/datasets/fashion-mnist")
REPO = Path(__file__).resolve().parents[1]


def assert_close_to_scale(got, want, rtol: float = 1e-5) -> None:
  """Each leaf elementwise to rtol of that leaf's largest magnitude: float32 summation order
  moves a sum by ~1e-7 of its terms' size, not of its own (which cancellation can make tiny)."""
  def close(g, w):
    assert np.shape(g) == np.shape(w), (np.shape(g), np.shape(w))
    scale = float(np.max(np.abs(w))) if np.size(w) else 0.0
    np.testing.assert_allclose(g, w, rtol=0, atol=rtol * max(scale, 1e-30))
  jax.tree.map(close, got, want)


def write_idx(path: Path, array: np.ndarray) -> None:
  """Writes a uint8 array as a gzipped MNIST-format IDX file."""
  magic = 0x0800 | array.ndim
  header = struct.pack(">I", magic) + struct.pack(f">{array.ndim}I", *array.shape)
  with gzip.open(path, "wb") as f:
    f.write(header + np.ascontiguousarray(array, np.uint8).tobytes())


def read_real(prefix: str, n: int) -> tuple[np.ndarray, np.ndarray]:
  """The first `n` real Fashion-MNIST images [n, 28, 28] and labels of a split prefix."""
  with gzip.open(FASHION / f"{prefix}-images-idx3-ubyte.gz") as f:
    images = np.frombuffer(f.read(16 + n * 784)[16:], np.uint8).reshape(n, 28, 28)
  with gzip.open(FASHION / f"{prefix}-labels-idx1-ubyte.gz") as f:
    labels = np.frombuffer(f.read(8 + n)[8:], np.uint8)
  return images, labels


@pytest.fixture(scope="session")
def fashion_slice(tmp_path_factory) -> Path:
  """A folder of IDX files holding the first 512 train / 128 test real Fashion-MNIST images."""
  if not (FASHION / "train-images-idx3-ubyte.gz").exists():
    pytest.skip(f"real Fashion-MNIST not in {FASHION} (make test installs it as root)")
  folder = tmp_path_factory.mktemp("fashion_slice")
  for prefix, n in (("train", 512), ("t10k", 128)):
    images, labels = read_real(prefix, n)
    write_idx(folder / f"{prefix}-images-idx3-ubyte.gz", images)
    write_idx(folder / f"{prefix}-labels-idx1-ubyte.gz", labels)
  return folder


@pytest.fixture(scope="session")
def tfds_dir(tmp_path_factory) -> Path:
  """One prepared-data folder shared by the session's tests."""
  return tmp_path_factory.mktemp("tensorflow_datasets")


def sharded_train_step(family, state, batch: dict, devices: list):
  """One train step compiled as the loop does, state replicated and batch split over `devices`.

  Returns (new state, metrics, the placed batch), still on the mesh.
  """
  from jaxgen import parallel, trainer
  mesh = parallel.make_mesh(devices)
  sharding = parallel.replicated(mesh)
  # Fresh buffers from host copies: the compiled step donates its state, and the caller's
  # arrays must survive it.
  state = jax.device_put(jax.device_get(state), sharding)
  batch = jax.device_put(jax.device_get(batch), parallel.data_sharding(mesh))
  step, _ = trainer.compile_train_step(family, state, sharding, batch, mesh)
  new_state, metrics = step(state, batch, jax.random.key(3))
  return new_state, metrics, batch


def train_steps_traced_once(train_step, state, batches: list, key) -> tuple:
  """Runs jit(train_step) over `batches`, failing if it traces more than once; (state, metrics list)."""
  chex.clear_trace_counter()

  @jax.jit
  @chex.assert_max_traces(n=1)
  def step(state, batch, key):
    return train_step(state, batch, key)

  metrics = []
  for batch in batches:
    state, m = step(state, batch, key)
    metrics.append(m)
  return state, metrics

"""Test set-up: 8 simulated CPU devices (set before JAX starts), small real-data slices, and
every helper the test modules share (`from conftest import ...`: they never import each other)."""

import gzip
import os
import socket
from pathlib import Path

# 8 simulated devices unless the caller chose a count (e.g. XLA_FLAGS=
# --xla_force_host_platform_device_count=4 make test): no test assumes 8.
if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
  ).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Many tests (and the CLI subprocesses, which inherit this) build the same small programs,
# e.g. a state's init: a persistent cache compiles each once per machine, not once per test.
os.environ.setdefault(
  "JAX_COMPILATION_CACHE_DIR", str(Path(__file__).resolve().parents[1] / ".pytest_cache" / "jax")
)
# pytest-xdist workers (make test runs two) inherit the controller's environment: each gets its
# own folder, since JAX writes entries without a lock and a worker could read another's half-
# written entry (a warning and a recompile, but noise in the CLI tests' output).
if worker := os.environ.get("PYTEST_XDIST_WORKER"):
  os.environ["JAX_COMPILATION_CACHE_DIR"] = os.environ["JAX_COMPILATION_CACHE_DIR"].rstrip("/") + (
    f"-{worker}"
  )
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")

import chex  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import ml_collections  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from jaxgen import config as config_lib  # noqa: E402

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


# Golden values are float32 losses of one step on one device. On the pinned versions the
# initial parameters and random numbers are bit-identical on every host (threefry is integer
# arithmetic); what moves between CPUs (AVX2 / AVX-512) is XLA's summation order and FMA use.
# Each layer's output is a sum of K <= 6400 products (5x5x256), which a reordering moves by
# ~log2(K) = 13 roundings of eps = 6e-8, ~8e-7 of its terms' magnitude; through ~6 layers in
# sequence that is ~5e-6, and x4 for cancellation in the losses' means gives 2e-5.
GOLDEN_RTOL = 2e-5
GOLDEN_PACKAGES = ("jax", "jaxlib", "flax", "optax", "numpy")


@pytest.fixture
def pinned_env() -> None:
  """Skips a golden-value test unless jax/jaxlib/flax/optax/numpy are constraints.txt's.

  Golden values depend on these versions (PRNG streams, initialisers, XLA's kernels); the
  suite pins them, so `make test` always checks them, and a user's other versions skip with
  the reason rather than fail.
  """
  from importlib import metadata

  pins = dict(
    line.split("==", 1)
    for line in (REPO / "constraints.txt").read_text().splitlines()
    if "==" in line and not line.startswith("#")
  )
  for name in GOLDEN_PACKAGES:
    installed = metadata.version(name).split("+")[0]
    if pins.get(name) != installed:
      pytest.skip(
        f"golden values were recorded with {name}=={pins.get(name)} "
        f"(constraints.txt); {installed} is installed"
      )


def random_batch(
  n: int = 16,
  shape: tuple = (28, 28, 1),
  seed: int = 1,
  *,
  grey_levels: bool = False,
  text: bool = False,
) -> dict:
  """A batch of `n` random images in [-1, 1] with labels in 0..9.

  grey_levels: images on the 8-bit grid of [-1, 1], as the data pipeline gives them.
  text: 60x60 canvases with the tokens of random captions, as captioned Fashion-MNIST.
  """
  k1, k2 = jax.random.split(jax.random.key(seed))
  shape = (60, 60, 1) if text else tuple(shape)
  if grey_levels:
    image = jax.random.randint(k1, (n, *shape), 0, 256).astype(jnp.float32) / 127.5 - 1.0
  else:
    image = jax.random.uniform(k1, (n, *shape), minval=-1.0, maxval=1.0)
  batch = {"image": image, "label": jax.random.randint(k2, (n,), 0, 10)}
  if text:
    from jaxgen.data import captions

    combos = list(captions.combinations())
    picks = jax.random.randint(k2, (n,), 0, len(combos))
    batch["tokens"] = jnp.asarray(
      np.stack([captions.tokenize(captions.caption(*combos[int(i)])) for i in picks])
    )
  return batch


def num_params(tree) -> int:
  """Number of scalars in a pytree of arrays."""
  return sum(int(np.size(x)) for x in jax.tree.leaves(tree))


# ------------------------------------------------------------------ small configs


def experiment_config(name: str, **model) -> ml_collections.ConfigDict:
  """experiments/configs/`name` with `model` fields updated (e.g. a small width)."""
  c = config_lib.load(REPO / "experiments/configs" / name)
  c.model.update(model)
  return c


def gan_config(**model) -> ml_collections.ConfigDict:
  """The DCGAN demo config on 28x28x1 images, `model` fields updated."""
  c = experiment_config("dcgan_fashion.py")
  c.data.image_shape = (28, 28, 1)
  c.model.update(model)
  return c


def vae_config(**model) -> ml_collections.ConfigDict:
  """The VAE config on 28x28x1 images at width 8, latent_dim 8, `model` fields updated."""
  c = experiment_config("vae_fashion.py")
  c.data.image_shape = (28, 28, 1)
  c.model.update(dict(width=8, latent_dim=8))
  c.model.update(model)
  return c


DRAW_TINY = dict(
  draw_steps=3,
  latent_dim=4,
  enc_features=16,
  dec_features=16,
  read_n=2,
  # a 3x3 Gaussian write window, whatever the config writes (aligndraw_captions.py: two 28x28
  # patches on a 16-pixel grid, held by test_draw's shift-write tests)
  write_n=3,
  write_attention="gaussian",
  write_patches=1,
  write_stride=1,
  embed_dim=8,
  lang_features=8,
  align_features=8,
)


def draw_config(text=False, **model) -> ml_collections.ConfigDict:
  """DRAW (alignDRAW with `text`) at DRAW_TINY's sizes, `model` fields updated."""
  c = experiment_config("aligndraw_captions.py" if text else "draw_fashion.py")
  c.model.update(DRAW_TINY)
  c.model.update(model)
  return c


# float64 comparisons of one computation done two ways (device counts, fast vs plain
# passes). A sum of n terms reordered moves by ~log2(n) roundings of eps = 1.1e-16 of its terms'
# magnitude; the deepest chain compared (alignDRAW's gradient: T recurrent steps of a few
# reductions over <= 28800 terms, ~180 roundings) stays below ~2e-14 of a leaf's scale. 1e-10
# is 3 orders above that and 7 below a real bug (per-shard statistics, per-device random
# numbers, a wrong gradient: >= 1e-3). float32's ~1e-4 disagreements on some CPUs scale
# by the ratio of the epsilons (1.9e-9) to ~3e-13 here.
X64_RTOL = 1e-10


def to_float64(tree):
  """Every floating leaf of `tree` as float64 (integer leaves, e.g. steps and labels, kept).

  Use inside `with jax.enable_x64(True):`; models and jaxgen.ops compute in their inputs' dtype.
  """
  return jax.tree.map(
    lambda x: (
      jnp.asarray(x, jnp.float64) if jnp.issubdtype(jnp.result_type(x), jnp.floating) else x
    ),
    tree,
  )


def write_idx(path: Path, array: np.ndarray, magic: int | None = None) -> None:
  """Writes a uint8 array as an MNIST-format IDX file (gzipped if path ends in .gz); `magic`
  replaces the header's type code and rank (default: uint8, array.ndim)."""
  magic = magic if magic is not None else 0x0800 | array.ndim
  payload = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape)
  payload += np.ascontiguousarray(array, np.uint8).tobytes()
  with (gzip.open if str(path).endswith(".gz") else open)(path, "wb") as f:
    f.write(payload)


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
    pytest.skip(
      f"real Fashion-MNIST not in {FASHION}: apt-get install dataset-fashion-mnist "
      "(make test does so when run as root)"
    )
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


@pytest.fixture(scope="session")
def real_base32(tfds_dir):
  """emoji/base32 rendered for real once per session (skipped without the Debian packages)."""
  from jaxgen.data import emoji

  font, table = emoji.source_paths()
  if not (font.is_file() and table.is_file()):
    pytest.skip(
      f"{font} / {table} not installed: apt-get install fonts-noto-color-emoji unicode-data"
    )
  return emoji.prepare(emoji.emoji_config("emoji/base32"), str(tfds_dir))


def free_port() -> int:
  """A TCP port on 127.0.0.1 that nothing listens on now (for a jax.distributed coordinator)."""
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def process_flags(port: int, process_id: int, num_processes: int = 2) -> list[str]:
  """jaxgen's flags making this process `process_id` of `num_processes`, coordinated on `port`."""
  return [
    "--coordinator",
    f"127.0.0.1:{port}",
    "--num_processes",
    str(num_processes),
    "--process_id",
    str(process_id),
  ]


def sharded_train_step(family, state, batch: dict, devices: list):
  """One train step compiled as the loop does, state replicated and batch split over `devices`:
  the loop's first step, so the first of the family's step variants (e.g. lazy R1 with it on).

  Returns (new state, metrics, the placed batch), still on the mesh.
  """
  from jaxgen import parallel, trainer

  mesh = parallel.make_mesh(devices)
  sharding = parallel.replicated(mesh)
  # Fresh buffers from host copies: the compiled step donates its state, and the caller's
  # arrays must survive it.
  state = jax.device_put(jax.device_get(state), sharding)
  batch = jax.device_put(jax.device_get(batch), parallel.data_sharding(mesh))
  variant = trainer.step_variants(family, state)[0]
  step, _ = trainer.compile_train_step(family, state, sharding, batch, mesh, variant=variant)
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

"""Classifier family: the conv net whose features and logits jaxgen's sample metrics use.

Trains with softmax cross-entropy (random horizontal flips as light augmentation) and a
cosine learning-rate decay over config.num_steps. `features(state, images)` is the
extractor; a classifier draws no images, so `sample` raises.
"""

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
from flax import struct

from jaxgen import config as config_lib
from jaxgen import losses, ops
from jaxgen.errors import UserError
from jaxgen.models import classifier as classifier_models
from jaxgen.steps import common


class NoSampler(UserError, NotImplementedError):
  """The family does not generate images."""


@struct.dataclass
class ClassifierState:
  step: jax.Array
  net: common.ModelState
  hp: ml_collections.FrozenConfigDict = struct.field(pytree_node=False)


def _model(hp: ml_collections.FrozenConfigDict) -> classifier_models.Classifier:
  return classifier_models.Classifier(
    num_classes=hp.num_classes,
    width=hp.width,
    feature_dim=hp.feature_dim,
    dropout=hp.dropout,
    fast_ops=hp.fast_ops,
    dtype=common.compute_dtype(hp),
  )


def init_state(
  config: ml_collections.ConfigDict, key: jax.Array, sample_batch: dict
) -> ClassifierState:
  """Initial state for images shaped like `sample_batch["image"]` and config.data.num_classes."""
  m = config.model
  num_classes = config.data.get("num_classes") or m.get("num_classes") or 10
  hp = ml_collections.FrozenConfigDict(
    dict(
      image_shape=tuple(sample_batch["image"].shape[1:]),
      num_classes=num_classes,
      width=m.width,
      feature_dim=m.feature_dim,
      dropout=m.dropout,
      flip=m.flip,
      fast_ops=ops.use_fast_ops(config.get("fast_ops", "auto")),
      accum_steps=config.get("accum_steps", 1),
      dtype=config_lib.check_dtype(config.get("dtype", "float32")),
    )
  )
  model = _model(hp)
  params, stats = common.init_model(model, key, sample_batch["image"][:1])
  lr = common.learning_rate(config, config.optim.lr)
  net = common.create_model_state(model, params, stats, config.optim, lr)
  return ClassifierState(step=jnp.zeros((), jnp.int32), net=net, hp=hp)


def _accuracy(logits_BxK: jax.Array, labels_B: jax.Array) -> jax.Array:
  return jnp.mean(jnp.argmax(logits_BxK, -1) == labels_B)


def train_step(state: ClassifierState, batch: dict, key: jax.Array) -> tuple[ClassifierState, dict]:
  """One cross-entropy update; metrics loss and accuracy on the (augmented) batch, the learning
  rate `lr` and the gradients' global norm `grad_norm`."""
  model, net = _model(state.hp), state.net
  flip_key, drop_key = jax.random.split(jax.random.fold_in(key, state.step))
  images, labels = batch["image"], batch["label"]
  if state.hp.flip:
    flip_B = jax.random.bernoulli(flip_key, 0.5, (images.shape[0],))
    images = jnp.where(flip_B[:, None, None, None], images[:, :, ::-1], images)

  def grads_fn(stats, inputs, micro_drop_key):
    images, labels = inputs

    def loss_fn(params):
      logits, new_stats = common.apply(
        model, params, stats, images, train=True, rngs={"dropout": micro_drop_key}
      )
      return losses.softmax_cross_entropy(logits, labels), (new_stats, logits)

    (loss, (stats, logits)), grads = common.value_and_grad(loss_fn, net)(net.params)
    return grads, stats, dict(loss=loss, accuracy=_accuracy(logits, labels))

  grads, stats, metrics = common.accumulate(
    grads_fn, net.batch_stats, (images, labels), drop_key, state.hp.accum_steps
  )
  net, logged = common.apply_gradients(net, grads, batch_stats=stats)
  return state.replace(step=state.step + 1, net=net), {**metrics, **logged}


def features(state: ClassifierState, images_BxHxWxC: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(penultimate features_BxD, logits_BxK) of images in [-1, 1], inference mode."""
  model, net = _model(state.hp), state.net
  return common.apply(
    model, net.params, net.batch_stats, images_BxHxWxC, train=False, method="features"
  )[0]


def eval_step(state: ClassifierState, batch: dict, key: jax.Array) -> dict:
  """Loss and accuracy on a batch, inference mode (`key` unused)."""
  del key
  _, logits = features(state, batch["image"])
  return dict(
    loss=losses.softmax_cross_entropy(logits, batch["label"]),
    accuracy=_accuracy(logits, batch["label"]),
  )


def sample(state: ClassifierState, key: jax.Array, num: int, conditioning: Any = None) -> jax.Array:
  """A classifier does not sample: raises NoSampler."""
  raise NoSampler(
    "a classifier draws no images; set --config.num_grid_samples=0 and "
    "--config.sample_every=0, and sample from a generative run instead"
  )

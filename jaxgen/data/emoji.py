"""Colour emoji images: every fully-qualified emoji of Unicode's emoji-test.txt, rendered from
Noto Color Emoji, labelled with its group and subgroup and captioned with its CLDR name.

Sources (Debian packages, nothing is downloaded):
  /usr/share/unicode/emoji/emoji-test.txt              `unicode-data`
  /usr/share/fonts/truetype/noto/NotoColorEmoji.ttf    `fonts-noto-color-emoji`
or a folder holding both files (data.source_dir).

Each emoji is drawn in colour at the font's bitmap size (109 px: 136 x 128 glyphs), centred by
its ink in a 136 x 136 square, composited on a white background (BACKGROUND) and resized to the
config's size with Lanczos. Emoji the font has no single glyph for (nothing drawn, or a sequence
that falls apart into several glyphs) are skipped and counted.

Configs "<variant><size>": base64, base32 (default: "emoji" is "emoji/base64"), all64, all32.
  base: one picture per emoji: no skin-tone modifier (U+1F3FB..1F3FF) and no hair component
    (U+1F9B0..1F9B3) sequences, which repeat a base emoji with another skin or hair.
  all: every fully-qualified emoji, variants included (People & Body is then over half of it).
The Component group (the bare skin-tone and hair swatches) is never included, so the label is
one of the nine GROUPS.

Split: an emoji is in test when the SHA-256 of its code points, variant modifiers, ZWJ and VS16
removed, is 0 mod 10 (TEST_MODULUS); all variants of an emoji land in the same split.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image, ImageDraw, ImageFont, features

from jaxgen.data import captions, idx
from jaxgen.data.idx import DataError
from jaxgen.data.pipeline import MappedSource

FONT_DIR = "/usr/share/fonts/truetype/noto"
FONT_FILE = "NotoColorEmoji.ttf"
FONT_PACKAGE = "fonts-noto-color-emoji"
TABLE_DIR = "/usr/share/unicode/emoji"
TABLE_FILE = "emoji-test.txt"
TABLE_PACKAGE = "unicode-data"

GROUPS = (
  "Smileys & Emotion",
  "People & Body",
  "Animals & Nature",
  "Food & Drink",
  "Travel & Places",
  "Activities",
  "Objects",
  "Symbols",
  "Flags",
)  # emoji-test.txt's groups in file order, without "Component"
SKIN_TONES = frozenset(range(0x1F3FB, 0x1F400))
HAIR = frozenset(range(0x1F9B0, 0x1F9B4))
ZWJ, VS16 = 0x200D, 0xFE0F
BACKGROUND = (255, 255, 255)  # white, as emoji are usually shown
FONT_SIZE = 109  # the only size of Noto Color Emoji's bitmap strike
CELL = 136  # the strike's glyph width; glyphs are centred in a CELL x CELL square
TEST_MODULUS = 10  # one emoji in ten (by hash) is in the test split
PAD = "<pad>"
UNK = "<unk>"  # in a training vocabulary: the id of every word only held-out names use
MAX_TOKENS = 16  # words per caption (the longest name in Emoji 15.0 has 11)
VARIANTS = ("base", "all")
SIZES = (64, 32)


def _install_hint() -> str:
  return (
    f"install them with `apt-get install {FONT_PACKAGE} {TABLE_PACKAGE}` (as root; `make data-emoji` "
    f"does it), or put {FONT_FILE} and {TABLE_FILE} in a folder and set data.source_dir to it"
  )


def source_paths(source_dir: str | None = None) -> tuple[Path, Path]:
  """(font, table) paths: in source_dir when given, else where the Debian packages put them."""
  if source_dir:
    return Path(source_dir) / FONT_FILE, Path(source_dir) / TABLE_FILE
  return Path(FONT_DIR) / FONT_FILE, Path(TABLE_DIR) / TABLE_FILE


def check_sources(source_dir: str | None = None) -> tuple[Path, Path]:
  """source_paths(), or a one-line DataError naming the missing file and its package."""
  font, table = source_paths(source_dir)
  for path, package in ((table, TABLE_PACKAGE), (font, FONT_PACKAGE)):
    if not path.is_file():
      raise DataError(f"{path} not found (Debian package {package}); {_install_hint()}")
  return font, table


# ------------------------------------------------------------------ the table


@dataclasses.dataclass(frozen=True)
class Entry:
  """One fully-qualified emoji: code points, group, subgroup and CLDR name."""

  codepoints: tuple[int, ...]
  group: str
  subgroup: str
  name: str

  @property
  def text(self) -> str:
    return "".join(map(chr, self.codepoints))

  @property
  def is_variant(self) -> bool:
    """Whether this is a skin-tone or hair variant of another emoji."""
    return any(c in SKIN_TONES or c in HAIR for c in self.codepoints)

  @property
  def split_key(self) -> tuple[int, ...]:
    """The code points without variant modifiers, ZWJ and VS16: shared by all variants."""
    drop = SKIN_TONES | HAIR | {ZWJ, VS16}
    return tuple(c for c in self.codepoints if c not in drop)

  @property
  def split(self) -> str:
    """ "test" when the SHA-256 of split_key is 0 mod TEST_MODULUS, else "train"."""
    digest = hashlib.sha256(" ".join(f"{c:X}" for c in self.split_key).encode()).digest()
    return "test" if int.from_bytes(digest[:8], "big") % TEST_MODULUS == 0 else "train"


def parse_table(path: str | os.PathLike) -> list[Entry]:
  """The fully-qualified entries of an emoji-test.txt, in file order, without Component."""
  entries, group, subgroup = [], None, None
  try:
    lines = Path(path).read_text(encoding="utf-8").splitlines()
  except (OSError, UnicodeDecodeError) as e:
    raise DataError(f"cannot read {path} ({e}); re-install {TABLE_PACKAGE}") from None
  for line in lines:
    if line.startswith("# group:"):
      group = line.split(":", 1)[1].strip()
    elif line.startswith("# subgroup:"):
      subgroup = line.split(":", 1)[1].strip()
    elif line and not line.startswith("#"):
      fields, _, comment = line.partition("#")
      codes, _, status = fields.partition(";")
      if status.strip() != "fully-qualified" or group == "Component":
        continue
      # comment: "<emoji> E<version> <name>"
      parts = comment.strip().split(" ", 2)
      if group not in GROUPS or subgroup is None or len(parts) < 3:
        raise DataError(
          f"{path} is not an emoji-test.txt (line {line!r}); re-install {TABLE_PACKAGE}"
        )
      cps = tuple(int(c, 16) for c in codes.split())
      entries.append(Entry(cps, group, subgroup, parts[2].strip()))
  if not entries:
    raise DataError(f"{path} lists no fully-qualified emoji; re-install {TABLE_PACKAGE}")
  return entries


def select(entries: list[Entry], variant: str) -> list[Entry]:
  """The entries of a variant: "base" drops skin-tone and hair variants, "all" keeps them."""
  if variant not in VARIANTS:
    raise DataError(f"unknown emoji variant {variant!r}; use one of {VARIANTS}")
  return [e for e in entries if variant == "all" or not e.is_variant]


def subgroups(entries: list[Entry]) -> tuple[str, ...]:
  """Subgroup names in file order; the subgroup feature is an index into this."""
  return tuple(dict.fromkeys(e.subgroup for e in entries))


# ------------------------------------------------------------------ captions


def words(name: str) -> list[str]:
  """Lower-case words of a name ("flag: St. Vincent & Grenadines" -> flag st vincent & ...)."""
  return captions.words(name)


def vocabulary(entries: list[Entry]) -> tuple[str, ...]:
  """(PAD, every word of the entries' names, sorted); a token is an index into it."""
  return (PAD, *sorted({w for e in entries for w in words(e.name)}))


def tokenize(name: str, vocab: tuple[str, ...]) -> np.ndarray:
  """Token ids int32 [MAX_TOKENS] of a name, padded with 0."""
  ws = words(name)
  if len(ws) > MAX_TOKENS:
    raise DataError(f"emoji name {name!r} has {len(ws)} words, more than MAX_TOKENS {MAX_TOKENS}")
  out = np.zeros(MAX_TOKENS, np.int32)
  out[: len(ws)] = [vocab.index(w) for w in ws]
  return out


def training_vocabulary(train_names: list[str]) -> tuple[str, ...]:
  """(PAD, UNK, every word of the training split's names, sorted): what text-to-image runs read.

  Words that occur only in held-out (test) names are not in it: their tokens become UNK, an
  embedding training never updates, so held-out names test generalisation honestly.
  """
  return (PAD, UNK, *sorted({w for n in train_names for w in words(n)}))


def token_map(data_vocab: Sequence[str], run_vocab: Sequence[str]) -> np.ndarray:
  """int32 [len(data_vocab)]: the run_vocab id of each data_vocab word (UNK's when missing)."""
  index = {w: i for i, w in enumerate(run_vocab)}
  return np.array([0] + [index.get(w, index[UNK]) for w in data_vocab[1:]], np.int32)


class Retokenized(MappedSource):
  """A split's source whose items' tokens index the training vocabulary (via `token_map`)."""

  def __init__(self, source: Sequence[dict], table: np.ndarray):
    super().__init__(source)
    self.table = table

  def _map(self, item: dict) -> dict:
    return dict(item, tokens=self.table[np.asarray(item["tokens"])])


def split_names(builder: Emoji, split: str) -> list[str]:
  """The names (captions) of a prepared split, in table order."""
  source = builder.as_data_source(split=split)
  return [item["caption"].decode() for item in source.__getitems__(list(range(len(source))))]


_VOCABULARIES: dict[str, tuple[str, ...]] = {}  # builder data_dir -> training vocabulary
_LOCK = threading.Lock()


def text_source(builder: Emoji, split: str) -> tuple[Retokenized, tuple[str, ...]]:
  """(the split's source with tokens in the training vocabulary, that vocabulary)."""
  with _LOCK:
    key = str(builder.data_dir)
    if key not in _VOCABULARIES:
      has_train = "train" in builder.info.splits  # a tiny table may put every emoji in test
      _VOCABULARIES[key] = training_vocabulary(split_names(builder, "train") if has_train else [])
    vocab = _VOCABULARIES[key]
  table = token_map(builder.info.metadata["vocabulary"], vocab)
  return Retokenized(builder.as_data_source(split=split), table), vocab


def held_out_names(builder: Emoji) -> list[str]:
  """The names kept out of training (the test split's), in table order."""
  return split_names(builder, "test")


# ------------------------------------------------------------------ rendering


Renderer = Callable[[str], "Image.Image | None"]  # text -> RGBA CELL x CELL, None if no glyph


def make_renderer(font_path: str | os.PathLike) -> Renderer:
  """A function drawing one emoji in colour, centred by its ink in an RGBA CELL x CELL square;
  None when the font has no single glyph for it (nothing drawn, or several glyphs wide)."""
  layout = ImageFont.Layout.RAQM if features.check("raqm") else ImageFont.Layout.BASIC
  try:
    font = ImageFont.truetype(os.fspath(font_path), FONT_SIZE, layout_engine=layout)
  except OSError as e:
    raise DataError(f"cannot load {font_path} ({e}); re-install {FONT_PACKAGE}") from None

  def render(text: str) -> Image.Image | None:
    if font.getlength(text) > 1.5 * CELL:  # a sequence drawn as several glyphs
      return None
    canvas = Image.new("RGBA", (2 * CELL, 2 * CELL), (0, 0, 0, 0))
    ImageDraw.Draw(canvas).text((CELL // 2, CELL // 2), text, font=font, embedded_color=True)
    box = canvas.getchannel("A").getbbox()
    if box is None:  # .notdef is blank in this font
      return None
    glyph = canvas.crop(box)
    if max(glyph.size) > CELL:
      glyph.thumbnail((CELL, CELL), Image.Resampling.LANCZOS)
    out = Image.new("RGBA", (CELL, CELL), (0, 0, 0, 0))
    out.paste(glyph, ((CELL - glyph.width) // 2, (CELL - glyph.height) // 2))
    return out

  return render


def to_array(
  rgba: Image.Image, size: int, background: tuple[int, int, int] = BACKGROUND
) -> np.ndarray:
  """An RGBA glyph composited on `background` and Lanczos-resized: uint8 [size, size, 3]."""
  base = Image.new("RGBA", rgba.size, (*background, 255))
  rgb = Image.alpha_composite(base, rgba).convert("RGB")
  return np.asarray(rgb.resize((size, size), Image.Resampling.LANCZOS), np.uint8)


def render_all(
  entries: list[Entry], render: Renderer, size: int
) -> tuple[list[tuple[Entry, np.ndarray]], list[Entry]]:
  """([(entry, image uint8 [size, size, 3])] for the drawn ones, [skipped entries])."""
  drawn, skipped = [], []
  for e in entries:
    glyph = render(e.text)
    if glyph is None:
      skipped.append(e)
    else:
      drawn.append((e, to_array(glyph, size)))
  return drawn, skipped


# ------------------------------------------------------------------ TFDS builder


@dataclasses.dataclass(eq=False)
class EmojiConfig(tfds.core.BuilderConfig):
  """Which emoji (variant), at what size, from which folder ("" = the Debian packages)."""

  variant: str = "base"
  image_size: int = 64
  source_dir: str = ""


CONFIGS = [
  EmojiConfig(
    name=f"{v}{s}",
    variant=v,
    image_size=s,
    description=f"{'Base' if v == 'base' else 'All'} emoji, {s}x{s} RGB on white.",
  )
  for v in VARIANTS
  for s in SIZES
]
DEFAULT = CONFIGS[0]


class Emoji(idx.LocalFilesBuilder, tfds.core.GeneratorBasedBuilder):
  """Noto Color Emoji glyphs: image, label (group), subgroup, caption (name), tokens, codepoints."""

  VERSION = tfds.core.Version("1.0.0")
  BUILDER_CONFIGS = CONFIGS
  MANUAL_DOWNLOAD_INSTRUCTIONS = f"Nothing is downloaded; {_install_hint()}."

  def _info(self) -> tfds.core.DatasetInfo:
    s = self.builder_config.image_size
    return tfds.core.DatasetInfo(
      builder=self,
      features=tfds.features.FeaturesDict(
        {
          "image": tfds.features.Tensor(shape=(s, s, 3), dtype=np.uint8),
          "label": tfds.features.ClassLabel(names=list(GROUPS)),
          "subgroup": tfds.features.Scalar(dtype=np.int32),  # index into metadata["subgroups"]
          "caption": tfds.features.Text(),
          "tokens": tfds.features.Tensor(shape=(MAX_TOKENS,), dtype=np.int32),
          "codepoints": tfds.features.Text(),  # e.g. "1F44D 1F3FD"
        }
      ),
      # subgroups, vocabulary and skipped come from the table and font; filled when preparing.
      metadata=tfds.core.MetadataDict(),
      disable_shuffling=True,  # keep the table's (CLDR) order
    )

  def _split_generators(self, dl_manager):
    del dl_manager
    cfg = self.builder_config
    font, table = check_sources(cfg.source_dir or None)
    entries = select(parse_table(table), cfg.variant)
    drawn, skipped = render_all(entries, make_renderer(font), cfg.image_size)
    print(
      f"{cfg.name}: drew {len(drawn)} of the table's {len(entries)} {cfg.variant} emoji; "
      f"{len(skipped)} skipped, the font has no glyph for them (metadata['skipped'])",
      flush=True,
    )
    subs, vocab = subgroups(entries), vocabulary(entries)
    self.info.metadata.update(
      subgroups=list(subs),
      vocabulary=list(vocab),
      skipped=[" ".join(f"{c:X}" for c in e.codepoints) for e in skipped],
    )
    examples = [
      (
        e.split,
        {
          "image": image,
          "label": GROUPS.index(e.group),
          "subgroup": subs.index(e.subgroup),
          "caption": e.name,
          "tokens": tokenize(e.name, vocab),
          "codepoints": " ".join(f"{c:X}" for c in e.codepoints),
        },
      )
      for e, image in drawn
    ]
    return {
      split: self._generate_examples(examples, split)
      for split in ("train", "test")
      if any(s == split for s, _ in examples)  # TFDS refuses an empty split
    }

  def _generate_examples(self, examples, split: str) -> Iterator[tuple[int, dict]]:
    for i, (s, example) in enumerate(examples):
      if s == split:
        yield i, example


def emoji_config(name: str, source_dir: str | None = None) -> EmojiConfig:
  """The config for "emoji[/base64|/base32|/all64|/all32]", from `source_dir` if given."""
  _, _, which = name.partition("/")
  configs = {c.name: c for c in CONFIGS}
  if which and which not in configs:
    raise DataError(f"unknown emoji data set {name!r}; use emoji or emoji/{{{','.join(configs)}}}")
  config = configs[which or DEFAULT.name]
  if not source_dir:
    return config
  source_dir = os.path.abspath(source_dir)
  tag = hashlib.sha1(source_dir.encode()).hexdigest()[:8]  # one prepared copy per folder
  return dataclasses.replace(config, name=f"{config.name}_{tag}", source_dir=source_dir)


def prepare(config: EmojiConfig, data_dir: str | None = None) -> Emoji:
  """Returns the builder for `config`, rendering it into array_record in data_dir if needed."""
  data_dir = data_dir or idx.default_data_dir()
  font, table = source_paths(config.source_dir or None)
  return idx.prepare_local(
    lambda: Emoji(config=config, data_dir=data_dir, file_format="array_record"),
    str(font.parent),
    f"rendering the {config.variant} emoji of {table} at {config.image_size}x{config.image_size}",
    lambda: check_sources(config.source_dir or None),
    files=f"font {font.name}",
  )

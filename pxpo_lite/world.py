"""The pixel-portraits world: small procedural portraits with exact part labels and prompts.

Every experiment in the series lives here (DESIGN.md §4):

* the colour experiment needs images with a lot of blue to reduce (blue backgrounds, shirts
  and hair are common);
* the segmentation experiment needs hair that a segmentation model can find (every image has
  an exact per-pixel part label, so the segmenter can be trained and measured exactly);
* the human-feedback experiment needs images a person can mark.

Each image is a head and shoulders on a plain background: hair of several styles and colours
(or none), eyes, a mouth, a shirt. ``render(n, seed)`` is deterministic, needs no files and
draws 10,000 portraits in about a second (vectorised NumPy).

Introduced in ``notebooks/00_tour.ipynb``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch

SIZE = 32
"""Images are SIZE × SIZE pixels."""

PARTS: tuple[str, ...] = ("background", "skin", "hair", "eyes", "mouth", "shirt")
"""Part names; the index of a name is its label id in ``Portraits.labels``."""
PART_ID = {name: i for i, name in enumerate(PARTS)}

# Colour palettes (RGB 0..255). Names are single words or "light blue", all in the vocabulary.
# Blue is common on purpose: the colour experiment penalises blue pixels.
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "blue": (45, 85, 215),
    "light blue": (140, 195, 240),
    "navy": (25, 35, 100),
    "green": (70, 165, 85),
    "yellow": (235, 205, 75),
    "pink": (235, 150, 190),
    "grey": (150, 150, 150),
}
BACKGROUND_WEIGHTS = (0.2, 0.15, 0.15, 0.125, 0.125, 0.125, 0.125)  # blue-ish: 50 %

HAIR_COLOURS: dict[str, tuple[int, int, int]] = {
    "black": (30, 25, 25),
    "brown": (115, 70, 35),
    "blonde": (235, 205, 120),
    "red": (195, 60, 30),
    "blue": (40, 90, 220),
}
HAIR_STYLES = ("short", "long", "curly")
P_BALD = 0.2

SHIRTS: dict[str, tuple[int, int, int]] = {
    "red": (205, 45, 45),
    "green": (45, 150, 60),
    "blue": (40, 70, 200),
    "white": (240, 240, 240),
    "black": (35, 35, 40),
    "orange": (240, 140, 30),
}
SKIN_TONES = ((245, 205, 170), (225, 175, 135), (185, 130, 90), (125, 85, 55))
EYE_COLOUR = (20, 20, 30)
MOUTH_COLOUR = (170, 50, 60)


@dataclass(frozen=True)
class Attributes:
    """What a prompt says about one portrait. ``hair_colour``/``hair_style`` are None when bald."""

    hair_colour: str | None
    hair_style: str | None
    shirt: str
    background: str

    @property
    def bald(self) -> bool:
        return self.hair_colour is None


def prompt_for(a: Attributes) -> str:
    """The caption of a portrait, e.g. "a portrait with long red hair and a green shirt on a navy background"."""
    who = "a bald portrait" if a.bald else f"a portrait with {a.hair_style} {a.hair_colour} hair and"
    joiner = " with" if a.bald else ""
    return f"{who}{joiner} a {a.shirt} shirt on a {a.background} background"


def parse_prompt(prompt: str) -> Attributes:
    """Inverse of :func:`prompt_for`. Raises ValueError naming the problem for any other text."""
    if not isinstance(prompt, str):
        raise TypeError(f"prompt must be a str, got {type(prompt).__name__}")
    p = " ".join(prompt.lower().split())
    try:
        if p.startswith("a bald portrait with a "):
            rest = p[len("a bald portrait with a "):]
            hair_colour = hair_style = None
        elif p.startswith("a portrait with "):
            rest = p[len("a portrait with "):]
            hair_style, rest = rest.split(" ", 1)
            hair_colour, rest = rest.split(" hair and a ", 1)
        else:
            raise ValueError
        shirt, rest = rest.split(" shirt on a ", 1)
        if not rest.endswith(" background"):
            raise ValueError
        background = rest[: -len(" background")]
    except ValueError:
        raise ValueError(
            f"prompt {prompt!r} does not follow the world's caption grammar; expected e.g. "
            f"{prompt_for(Attributes('red', 'long', 'green', 'navy'))!r} or "
            f"{prompt_for(Attributes(None, None, 'white', 'blue'))!r}"
        ) from None
    for value, options, what in (
        (hair_colour, HAIR_COLOURS, "hair colour"),
        (hair_style, HAIR_STYLES, "hair style"),
        (shirt, SHIRTS, "shirt colour"),
        (background, BACKGROUNDS, "background"),
    ):
        if value is not None and value not in options:
            raise ValueError(f"unknown {what} {value!r} in prompt {prompt!r}; known: {sorted(options)}")
    return Attributes(hair_colour, hair_style, shirt, background)


def vocabulary() -> list[str]:
    """Every word the world's prompts use (the tiny model's tokenizer knows exactly these)."""
    words = set("a portrait with hair and shirt on background bald".split())
    for names in (BACKGROUNDS, HAIR_COLOURS, SHIRTS):
        for n in names:
            words.update(n.split())
    words.update(HAIR_STYLES)
    return sorted(words)


def all_prompts() -> list[str]:
    """Every distinct prompt of the world (for tokenizer training and prompt pickers)."""
    out = []
    for bg in BACKGROUNDS:
        for sh in SHIRTS:
            out.append(prompt_for(Attributes(None, None, sh, bg)))
            for hc in HAIR_COLOURS:
                for hs in HAIR_STYLES:
                    out.append(prompt_for(Attributes(hc, hs, sh, bg)))
    return out


@dataclass
class Portraits:
    """A batch of rendered portraits.

    images: (n, 3, H, W) float32 in [0, 1]; labels: (n, H, W) int64 ids into PARTS;
    prompts: n captions; attributes: what each caption says.
    """

    images: torch.Tensor
    labels: torch.Tensor
    prompts: list[str]
    attributes: list[Attributes] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.prompts)


def _check_seed(seed) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"seed must be an int (e.g. seed=0), got {type(seed).__name__}: {seed!r}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    return int(seed)


def sample_attributes(n: int, rng: np.random.Generator) -> list[Attributes]:
    bgs = list(BACKGROUNDS)
    bg_idx = rng.choice(len(bgs), size=n, p=BACKGROUND_WEIGHTS)
    shirts = list(SHIRTS)
    sh_idx = rng.integers(0, len(shirts), size=n)
    hc_names = list(HAIR_COLOURS)
    hc_idx = rng.integers(0, len(hc_names), size=n)
    hs_idx = rng.integers(0, len(HAIR_STYLES), size=n)
    bald = rng.random(n) < P_BALD
    return [
        Attributes(
            None if bald[i] else hc_names[hc_idx[i]],
            None if bald[i] else HAIR_STYLES[hs_idx[i]],
            shirts[sh_idx[i]],
            bgs[bg_idx[i]],
        )
        for i in range(n)
    ]


def render(n: int, seed: int, attributes: Sequence[Attributes] | None = None) -> Portraits:
    """Render ``n`` portraits from ``seed`` (deterministic).

    If ``attributes`` is given (length n) those are drawn instead of random ones; the seed
    still decides pose, size, skin tone and colour jitter.
    """
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n must be a positive int, got {n!r}")
    rng = np.random.default_rng(_check_seed(seed))
    attrs = list(attributes) if attributes is not None else sample_attributes(n, rng)
    if len(attrs) != n:
        raise ValueError(f"attributes has {len(attrs)} entries but n={n}")

    H = W = SIZE
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
    yy, xx = yy[None], xx[None]  # (1,H,W)

    def col(values):  # per-image scalar -> (n,1,1)
        return np.asarray(values, dtype=np.float32)[:, None, None]

    cx = col(15.5 + rng.uniform(-2.0, 2.0, n))
    cy = col(13.0 + rng.uniform(-1.0, 1.0, n))
    rx = col(rng.uniform(5.2, 6.4, n))
    ry = col(rng.uniform(6.2, 7.4, n))
    shoulder_y = cy + ry + col(rng.uniform(1.5, 3.0, n))
    shoulder_w = col(rng.uniform(10.0, 13.0, n))

    style = np.array([a.hair_style or "" for a in attrs])
    bald = style == ""
    s_short, s_long, s_curly = (style == s for s in HAIR_STYLES)

    labels = np.zeros((n, H, W), dtype=np.int64)

    def paint(mask, part):
        labels[mask] = PART_ID[part]

    head = ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 <= 1.0
    # Hair behind the head: long hair falls to the shoulders, curly hair is a big round mop.
    long_back = (np.abs(xx - cx) <= rx + 1.6) & (yy >= cy - ry) & (yy <= shoulder_y + 2.5)
    long_back |= ((xx - cx) / (rx + 1.6)) ** 2 + ((yy - cy) / (ry + 1.6)) ** 2 <= 1.0
    curly_back = ((xx - cx) / (rx + 3.2)) ** 2 + ((yy - (cy - 1.0)) / (ry + 2.4)) ** 2 <= 1.0
    paint(long_back & s_long[:, None, None], "hair")
    paint(curly_back & s_curly[:, None, None], "hair")
    # Shirt: a half-ellipse rising from the bottom edge; the neck is a strip of skin.
    shirt = (yy >= shoulder_y) & (((xx - cx) / shoulder_w) ** 2 + ((yy - (H + 3.0)) / (H + 3.0 - shoulder_y)) ** 2 <= 1.0)
    paint(shirt, "shirt")
    neck = (np.abs(xx - cx) <= 2.0) & (yy >= cy) & (yy < shoulder_y + 1.0)
    paint(neck, "skin")
    paint(head, "skin")
    # Hair on top of the head (every style): a cap above the hairline.
    hairline = cy - ry * col(rng.uniform(0.15, 0.35, n))
    cap = (((xx - cx) / (rx + 1.0)) ** 2 + ((yy - cy + 0.4) / (ry + 1.2)) ** 2 <= 1.0) & (yy <= hairline)
    paint(cap & ~bald[:, None, None], "hair")
    # Face features.
    eye_y = np.round(cy + ry * 0.05).astype(int)[:, 0, 0]
    ex = np.round(rx * 0.45).astype(int)[:, 0, 0]
    cxi = np.floor(cx).astype(int)[:, 0, 0]
    mouth_y = np.round(cy + ry * 0.5).astype(int)[:, 0, 0]
    idx = np.arange(n)
    labels[idx, eye_y, cxi - ex] = PART_ID["eyes"]
    labels[idx, eye_y, cxi + ex + 1] = PART_ID["eyes"]
    for dx in (-1, 0, 1, 2):
        labels[idx, mouth_y, cxi + dx] = PART_ID["mouth"]

    # Colours: a palette per part per image, jittered a little so the model sees a distribution.
    palette = np.zeros((n, len(PARTS), 3), dtype=np.float32)
    palette[:, PART_ID["background"]] = [BACKGROUNDS[a.background] for a in attrs]
    palette[:, PART_ID["skin"]] = np.asarray(SKIN_TONES, np.float32)[rng.integers(0, len(SKIN_TONES), n)]
    palette[:, PART_ID["hair"]] = [HAIR_COLOURS[a.hair_colour] if a.hair_colour else (0, 0, 0) for a in attrs]
    palette[:, PART_ID["eyes"]] = EYE_COLOUR
    palette[:, PART_ID["mouth"]] = MOUTH_COLOUR
    palette[:, PART_ID["shirt"]] = [SHIRTS[a.shirt] for a in attrs]
    palette += rng.uniform(-10.0, 10.0, palette.shape).astype(np.float32)
    palette = np.clip(palette, 0.0, 255.0) / 255.0

    images = np.take_along_axis(palette[:, None, None, :, :], labels[..., None, None], axis=3)[..., 0, :]
    images = images.transpose(0, 3, 1, 2)  # (n,3,H,W)
    return Portraits(
        images=torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32)),
        labels=torch.from_numpy(labels),
        prompts=[prompt_for(a) for a in attrs],
        attributes=attrs,
    )


def nearest_colour(rgb: np.ndarray | Sequence[float], palette: dict[str, tuple[int, int, int]]) -> str:
    """Name of the palette colour closest (Euclidean, RGB in [0,1]) to ``rgb``."""
    rgb = np.asarray(rgb, dtype=np.float32)
    names = list(palette)
    ref = np.asarray([palette[k] for k in names], dtype=np.float32) / 255.0
    return names[int(np.argmin(((ref - rgb) ** 2).sum(-1)))]

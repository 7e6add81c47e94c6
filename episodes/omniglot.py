"""Omniglot (Lake, Salakhutdinov and Tenenbaum, "Human-level concept learning through
probabilistic program induction", Science 2015), read from its published zips or their
extracted folders.

Each set (``images_background``, ``images_evaluation``, ``images_background_small1``,
``images_background_small2``) holds ``<set_name>/<Alphabet>/<characterNN>/<file>.png``: 105x105
black-on-white drawings, 20 drawers per character. Images are inverted to the project's
convention (strokes bright, 255, on a dark, 0, background) and resized to ``img_size``.

Two protocols, chosen by which sets are present:

- **Vinyals-style** (full Omniglot: ``images_background`` + ``images_evaluation``, 1623
  characters): all characters sorted by (alphabet, character) and shuffled with a fixed seed
  (0); the first 1028 are train, the next 172 val, the last 423 test (the counts of Snell et
  al., 2017). Each of the four rotations (0/90/180/270 degrees) is its own class in every split,
  as in Vinyals et al. (2016) and Snell et al. This is *Vinyals-style*, not Vinyals' exact
  class list (that text file is not shipped), so numbers are comparable in protocol, not split.
- **omniglot-minimal** (``images_background_small1`` + ``images_background_small2``): test =
  the characters of the alphabets found only in small2 (Japanese_(katakana), Sanskrit, Tagalog:
  106 classes, no rotation); val = 3 characters per small1 alphabet, held out with a fixed seed
  (15 classes, no rotation); train = the other 121 small1 characters x 4 rotations (484
  classes). Greek and Latin are byte-identical in both zips and are read from small1 only, so
  alphabets never cross train/test.

  ``val_per_alphabet`` (``--val-per-alphabet V``, default 3) holds out V characters of every
  small1 alphabet instead. How the split is made, for any V: the five small1 alphabets are taken
  in sorted order (Balinese, Early_Aramaic, Greek, Korean, Latin) and one ``random.Random(0)``
  draws V of each alphabet's sorted characters in turn (``rng.sample``); those 5 V characters are
  the val split, unrotated (rotations are a training augmentation: no rotated copy of any
  character is in val, and no copy of a val character is in train); every other small1
  character, with its four rotations, trains. Every alphabet stays in both train and val (V must
  be below its character count, 22 for Early_Aramaic), so val asks what validation should: new
  characters of the training alphabets. V = 3 is the historical split exactly (the same draws),
  so results made with it stay valid; a larger V also takes other characters (the draws of a
  later alphabet depend on how many the earlier ones took), and trains on fewer: V = 6 gives 30
  val classes (enough for 20-way validation banks) and 106 x 4 = 424 training classes.

Episodes within one alphabet (Lake et al. 2015's one-shot protocol: every episode's classes from
one alphabet) group the classes with :func:`alphabet_groups`; ``episodes.sampler.class_groups``
resolves ``--episode-groups alphabet`` through it.

Class names are ``Greek/character01`` and, for rotated copies, ``Greek/character01@rot90``
(quarter turns counterclockwise, by :func:`torch.rot90` on the decoded tensors).
"""
from __future__ import annotations

import logging
import random
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import torch

from .catalog import Splits, register_dataset
from .decode import decode_images, read_zip_members
from .errors import DataError
from .imageset import ImageSet

__all__ = ["OMNIGLOT_SETS", "find_omniglot_sets", "read_omniglot_set", "load_omniglot", "alphabet_of",
           "alphabet_groups"]

log = logging.getLogger(__name__)

#: The set names the loader recognises, as zips (``<name>.zip``) or extracted folders.
OMNIGLOT_SETS = ("images_background", "images_evaluation", "images_background_small1", "images_background_small2")
_FULL = ("images_background", "images_evaluation")
_MINIMAL = ("images_background_small1", "images_background_small2")
VINYALS_COUNTS = (1028, 172, 423)
MINIMAL_VAL_PER_ALPHABET = 3
ROTATIONS = (0, 1, 2, 3)  # quarter turns
SEED = 0

CharacterKey = Tuple[str, str]  # (alphabet, character)
CharacterImages = Dict[CharacterKey, List[Tuple[str, bytes]]]  # key -> [(source, png bytes)]


def find_omniglot_sets(root: Path) -> Dict[str, Path]:
    """Locate the Omniglot sets at ``root``.

    ``root`` is a folder holding any of the sets (zip or extracted folder), or one of those zips
    or folders itself, in which case its siblings are looked at too. A folder wins over a zip of
    the same name.

    Returns:
        ``{set_name: path}`` for every set found.
    """
    root = Path(root)
    if not root.exists():
        raise DataError(f"{root}: no such file or directory (expected Omniglot zips or folders)")
    name = root.name[:-4] if root.suffix.lower() == ".zip" else root.name
    folder = root.parent if name in OMNIGLOT_SETS else root
    if not folder.is_dir():
        raise DataError(f"{root}: not an Omniglot set; expected one of "
                        f"{', '.join(s + '.zip' for s in OMNIGLOT_SETS)} or their extracted folders")
    found = {}
    for set_name in OMNIGLOT_SETS:
        as_dir, as_zip = folder / set_name, folder / f"{set_name}.zip"
        if as_dir.is_dir():
            found[set_name] = as_dir
        elif as_zip.is_file():
            found[set_name] = as_zip
    return found


def read_omniglot_set(path: Path) -> CharacterImages:
    """Read one Omniglot set (zip or extracted folder) without decoding it.

    Args:
        path: ``<set_name>.zip`` holding ``<set_name>/<Alphabet>/<character>/<file>.png``, or the
            extracted folder ``<set_name>/`` holding ``<Alphabet>/<character>/<file>.png``.

    Returns:
        ``{(alphabet, character): [(source, png_bytes), ...]}``, sorted by key and by file name.
        ``source`` names the file (``set.zip:member`` inside a zip).
    """
    path = Path(path)
    if path.is_dir():
        chars = _read_set_folder(path)
    elif path.is_file():
        chars = _read_set_zip(path)
    else:
        raise DataError(f"{path}: no such file or directory (expected an Omniglot zip or folder)")
    if not chars:
        raise DataError(f"{path}: no Omniglot characters found; expected <Alphabet>/<characterNN>/<file>.png inside")
    return dict(sorted(chars.items()))


def _read_set_zip(path: Path) -> CharacterImages:
    set_name = path.name[:-4] if path.suffix.lower() == ".zip" else path.stem
    expected = f"'{set_name}/<Alphabet>/<characterNN>/<file>.png'"
    members = read_zip_members(path, suffixes=(".png",))
    if not members:
        raise DataError(f"{path}: no PNG members; expected Omniglot's layout {expected}")
    chars: CharacterImages = {}
    for member, data in members:
        parts = member.split("/")
        if len(parts) != 4 or parts[0] != set_name or not all(parts):
            raise DataError(f"{path}: not Omniglot's layout: expected members like {expected}, "
                            f"found {member!r}")
        chars.setdefault((parts[1], parts[2]), []).append((f"{path}:{member}", data))
    return chars


def _read_set_folder(path: Path) -> CharacterImages:
    inner = path / path.name
    if inner.is_dir() and len([p for p in path.iterdir() if not p.name.startswith(".")]) == 1:
        path = inner  # extracted with an extra level: <set>/<set>/<Alphabet>/...
    expected = f"'{path}/<Alphabet>/<characterNN>/<file>.png'"
    chars: CharacterImages = {}
    for alphabet in _visible(path, expected):
        if not alphabet.is_dir():
            _refuse_misplaced_png(alphabet, expected)
            continue
        entries = _visible(alphabet, expected)
        for entry in entries:
            if not entry.is_dir():
                _refuse_misplaced_png(entry, expected)
        characters = [c for c in entries if c.is_dir()]
        if not characters:
            raise DataError(f"{alphabet}: alphabet folder has no character folders; expected {expected}")
        for character in characters:
            entries = _visible(character, expected)
            for sub in entries:
                if sub.is_dir():
                    raise DataError(f"{sub}: unexpected folder inside a character folder; expected {expected}")
            pngs = [f for f in entries if f.suffix.lower() == ".png" and f.is_file()]
            if not pngs:
                raise DataError(f"{character}: empty character folder (no .png files); "
                                f"every character needs its drawings")
            chars[(alphabet.name, character.name)] = [(str(f), _read_file(f)) for f in pngs]
    return chars


def _refuse_misplaced_png(path: Path, expected: str) -> None:
    if path.suffix.lower() == ".png":
        raise DataError(f"{path}: image outside a character folder; expected Omniglot's layout {expected}")


def _visible(folder: Path, expected: str) -> List[Path]:
    try:
        return sorted(p for p in folder.iterdir() if not p.name.startswith("."))
    except OSError as e:
        raise DataError(f"{folder}: cannot list folder ({e.strerror or e}); expected {expected}") from e


def _read_file(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise DataError(f"{path}: cannot read file ({e.strerror or e})") from e


def _decode_characters(chars: CharacterImages, keys: Sequence[CharacterKey], img_size: int) -> List[torch.Tensor]:
    """Decode the given characters once. Returns one ``[n_k, 1, S, S]`` uint8 per key, strokes bright."""
    items = [item for k in keys for item in chars[k]]
    images = 255 - decode_images(items, img_size, channels=1)  # Omniglot is black on white
    return list(torch.split(images, [len(chars[k]) for k in keys]))


def _build_set(keys: Sequence[CharacterKey], images: Sequence[torch.Tensor], rotations: Sequence[int],
               name: str) -> ImageSet:
    """One class per (character, rotation), in key order then rotation order."""
    blocks, labels, names = [], [], []
    for key, imgs in zip(keys, images):
        for k in rotations:
            blocks.append(torch.rot90(imgs, k, dims=(2, 3)) if k else imgs)
            labels.append(torch.full((imgs.shape[0],), len(names), dtype=torch.long))
            names.append(f"{key[0]}/{key[1]}" + (f"@rot{90 * k}" if k else ""))
    return ImageSet(torch.cat(blocks), torch.cat(labels), names, name=name)


def _merge(sets: Sequence[CharacterImages]) -> CharacterImages:
    """Union of sets by (alphabet, character); a character present twice is kept once (the first)."""
    merged: CharacterImages = {}
    for chars in sets:
        for key, items in chars.items():
            if key in merged:
                if [d for _, d in merged[key]] != [d for _, d in items]:
                    log.warning("character %s/%s differs between %s and %s; using the first",
                                key[0], key[1], merged[key][0][0], items[0][0])
                continue
            merged[key] = items
    return dict(sorted(merged.items()))


def _vinyals_splits(chars: CharacterImages, img_size: int, counts: Sequence[int] = VINYALS_COUNTS,
                    seed: int = SEED, prefix: str = "omniglot") -> Splits:
    """Vinyals-style split of all characters: sorted, shuffled with ``seed``, cut by ``counts``."""
    keys = sorted(chars)
    if len(keys) != sum(counts):
        raise DataError(f"full Omniglot needs {sum(counts)} characters "
                        f"({counts[0]} train + {counts[1]} val + {counts[2]} test); found {len(keys)} in "
                        f"images_background + images_evaluation. Are the zips complete?")
    random.Random(seed).shuffle(keys)
    cut = (counts[0], counts[0] + counts[1])
    parts = (sorted(keys[:cut[0]]), sorted(keys[cut[0]:cut[1]]), sorted(keys[cut[1]:]))
    sets = [_build_set(p, _decode_characters(chars, p, img_size), ROTATIONS, f"{prefix}/{s}")
            for p, s in zip(parts, ("train", "val", "test"))]
    return Splits(*sets)


def _minimal_splits(small1: CharacterImages, small2: CharacterImages, img_size: int,
                    val_per_alphabet: int = MINIMAL_VAL_PER_ALPHABET, seed: int = SEED) -> Splits:
    """omniglot-minimal: train/val from small1's characters (``val_per_alphabet`` of each alphabet held out,
    see the module docstring), test from the alphabets only in small2."""
    alphabets1 = sorted({a for a, _ in small1})
    test_keys = sorted(k for k in small2 if k[0] not in alphabets1)
    if not test_keys:
        raise DataError("images_background_small2 has no alphabet that is not also in images_background_small1; "
                        "omniglot-minimal tests on the alphabets found only in small2")
    rng = random.Random(seed)
    val_keys = []
    for alphabet in alphabets1:
        own = sorted(k for k in small1 if k[0] == alphabet)
        if len(own) <= val_per_alphabet:
            raise DataError(f"images_background_small1: alphabet {alphabet!r} has {len(own)} characters; "
                            f"omniglot-minimal holds out {val_per_alphabet} per alphabet and needs more"
                            + ("" if val_per_alphabet == MINIMAL_VAL_PER_ALPHABET else
                               f" (use --val-per-alphabet {len(own) - 1} or fewer)"))
        val_keys += rng.sample(own, val_per_alphabet)
    val_keys = sorted(val_keys)
    train_keys = sorted(set(small1) - set(val_keys))
    both = {**small1, **small2}
    return Splits(
        _build_set(train_keys, _decode_characters(both, train_keys, img_size), ROTATIONS, "omniglot-minimal/train"),
        _build_set(val_keys, _decode_characters(both, val_keys, img_size), (0,), "omniglot-minimal/val"),
        _build_set(test_keys, _decode_characters(both, test_keys, img_size), (0,), "omniglot-minimal/test"),
    )


@register_dataset("omniglot", needs_root=True, default_img_size=28, in_chans=1,
                  description="Omniglot zips or folders: Vinyals-style split of the full set "
                              "(1028/172/423 characters x 4 rotations), or omniglot-minimal "
                              "(small1/small2: 484/15/106 classes; --val-per-alphabet V: 4 (136 - 5 V) / 5 V / 106)")
def load_omniglot(root: Path, img_size: int, val_per_alphabet: Optional[int] = None) -> Splits:
    """Load Omniglot from ``root`` (see the module docstring for where files go and the protocols).

    Args:
        root: a folder with the sets, or one set's zip or folder.
        img_size: images are resized to ``img_size x img_size``.
        val_per_alphabet: omniglot-minimal only: characters of every small1 alphabet held out for
            validation (None: 3, the historical split). The full Omniglot's Vinyals-style split is
            fixed and refuses it.

    Returns:
        :class:`Splits` of uint8 ``[N, 1, img_size, img_size]`` image sets, strokes bright.
    """
    if val_per_alphabet is not None and (isinstance(val_per_alphabet, bool) or not isinstance(val_per_alphabet, int)
                                         or val_per_alphabet < 1):
        raise DataError(f"omniglot: val_per_alphabet must be a positive integer, got {val_per_alphabet!r}")
    sets = find_omniglot_sets(root)
    if all(s in sets for s in _FULL):
        if val_per_alphabet is not None:
            raise DataError(f"{root}: --val-per-alphabet applies to omniglot-minimal (images_background_small1/2); "
                            f"the full Omniglot's Vinyals-style split has a fixed val split of {VINYALS_COUNTS[1]} "
                            "characters")
        log.info("omniglot: Vinyals-style split of %s", ", ".join(str(sets[s]) for s in _FULL))
        return _vinyals_splits(_merge([read_omniglot_set(sets[s]) for s in _FULL]), img_size, VINYALS_COUNTS)
    if all(s in sets for s in _MINIMAL):
        log.info("omniglot: omniglot-minimal protocol from %s", ", ".join(str(sets[s]) for s in _MINIMAL))
        held = MINIMAL_VAL_PER_ALPHABET if val_per_alphabet is None else val_per_alphabet
        return _minimal_splits(read_omniglot_set(sets[_MINIMAL[0]]), read_omniglot_set(sets[_MINIMAL[1]]), img_size,
                               held)
    found = ", ".join(str(p) for p in sets.values()) or "none of them"
    raise DataError(f"{root}: incomplete Omniglot; found {found}. Needed: images_background + "
                    f"images_evaluation (full Omniglot), or images_background_small1 + "
                    f"images_background_small2 (omniglot-minimal), each as <name>.zip or an extracted folder")


def alphabet_of(class_name: str) -> str:
    """The alphabet of an Omniglot class name: ``Greek/character01@rot90`` -> ``Greek`` (a rotated copy
    belongs to its character's alphabet)."""
    alphabet, sep, character = class_name.partition("/")
    if not sep or not alphabet or not character:
        raise DataError(f"{class_name!r} is not an Omniglot class name (<Alphabet>/<character>[@rot<deg>])")
    return alphabet


def alphabet_groups(images: ImageSet) -> Dict[str, List[int]]:
    """The classes of an Omniglot image set grouped by alphabet.

    Args:
        images: an image set of :func:`load_omniglot` (class names ``<Alphabet>/<character>[@rot<deg>]``).

    Returns:
        ``{alphabet: [class index, ...]}``, alphabets sorted, indices ascending; rotated copies of a
        character are in its alphabet's group.
    """
    groups: Dict[str, List[int]] = {}
    for c, name in enumerate(images.class_names):
        try:
            groups.setdefault(alphabet_of(name), []).append(c)
        except DataError as e:
            raise DataError(f"{images.name}: {e}; alphabet groups need Omniglot's class names") from None
    return dict(sorted(groups.items()))

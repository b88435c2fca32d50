"""The official SMPL and MANO ``.pkl`` files -> plain-array files that smplx loads without chumpy
(``crocoman-data body-models --convert FILE --out DIR``).

The files from smpl.is.tue.mpg.de and mano.is.tue.mpg.de (``basicModel_neutral_lbs_10_207_0_v1.0.0.pkl``,
``basicmodel_m_lbs_10_207_0_v1.1.0.pkl``, ``SMPL_FEMALE.pkl``, ``MANO_RIGHT.pkl`` ...) are Python 2
pickles (protocol 2) of a dict that holds, besides numpy arrays and strings:

- chumpy objects: SMPL's ``shapedirs`` is a ``chumpy.ch.Ch`` (its array is the state's ``x``);
  MANO's is a ``chumpy.reordering.Select`` over a ``Ch``, i.e. ``a.x.ravel()[idxs]`` reshaped
  to ``preferred_shape``. A ``Ch`` keeps its dirty-variable names in a ``set``.
- scipy sparse matrices: ``J_regressor`` (and SMPL's ``J_regressor_prior``) are
  ``scipy.sparse.csc.csc_matrix`` (``scipy.sparse._csc`` when re-pickled by a recent scipy),
  whose state is ``_shape``, ``data``, ``indices`` and ``indptr``.

smplx unpickles them with ``pickle.load``, which imports chumpy, and chumpy does not import on
Python 3.11+ (``inspect.getargspec`` is gone) nor on numpy >= 1.24. Unpickling also calls whatever
the stream names, so a crafted file would run code. Here ``datamodules.safe_pickle`` reads the file:
the names above resolve to small stand-ins that only hold their state (then become numpy arrays,
the sparse ones dense, which is what smplx makes of them anyway), and any other name, another
chumpy class included, is refused with ``UnsafePickleError`` before it is called.

The result is written where ``smplx.create(out, model_type=...)`` looks: ``smpl/SMPL_<GENDER>.pkl``
(smplx's SMPL reads only pickles: ours holds only numpy arrays and strings) and ``.npz`` (no pickle,
what ``body.model`` prefers), or ``mano/MANO_<SIDE>.pkl`` and ``.npz``. Nested metadata
(SMPL's ``pose_training_info`` dict) is left out.
"""

import os
import pickle
import re
from pathlib import Path
from typing import Any

import numpy as np

from datamodules.safe_pickle import RestrictedUnpickler, UnsafePickleError

SMPL_GENDERS = ("neutral", "female", "male")
MANO_SIDES = ("right", "left")
_GENDER_TOKENS = {"neutral": "neutral", "female": "female", "f": "female", "male": "male", "m": "male"}
# what smplx reads from each model type's file
_REQUIRED = {
    "smpl": ("v_template", "f", "shapedirs", "posedirs", "J_regressor", "weights", "kintree_table"),
    "mano": ("v_template", "f", "shapedirs", "posedirs", "J_regressor", "weights", "kintree_table",
             "hands_components", "hands_mean"),
}
_SMPL_JOINTS = 24


class _PickledObject:
    """An object of a class we do not import: unpickling only stores its state (a dict)."""

    what = "object"

    def __setstate__(self, state: Any) -> None:
        if not isinstance(state, dict):
            raise ValueError(f"a pickled {self.what} has state {type(state).__name__}, expected a dict")
        self.state = state

    def field(self, key: str) -> Any:
        if key not in self.state:
            raise ValueError(f"a pickled {self.what} lacks {key!r} (has {sorted(self.state)})")
        return self.state[key]


class _Ch(_PickledObject):
    """``chumpy.ch.Ch``: a plain array, its state's ``x``."""

    what = "chumpy.ch.Ch"

    def array(self) -> np.ndarray:
        return _as_array(self.field("x"))


class _Select(_PickledObject):
    """``chumpy.reordering.Select``: ``a.ravel()[idxs]``, reshaped to ``preferred_shape`` when set."""

    what = "chumpy.reordering.Select"

    def array(self) -> np.ndarray:
        selected = _as_array(self.field("a")).ravel()[np.asarray(self.field("idxs")).ravel()]
        shape = self.state.get("preferred_shape")
        return selected if shape is None else selected.reshape(shape)


class _CscMatrix(_PickledObject):
    """``scipy.sparse`` CSC matrix: made dense (smplx densifies J_regressor anyway)."""

    what = "scipy.sparse csc_matrix"

    def array(self) -> np.ndarray:
        shape = self.state.get("_shape", self.state.get("shape"))
        if shape is None or len(shape) != 2:
            raise ValueError(f"a pickled {self.what} has no 2-D shape (state keys {sorted(self.state)})")
        data, indices, indptr = (np.asarray(self.field(key)) for key in ("data", "indices", "indptr"))
        if len(indptr) != shape[1] + 1 or not len(data) == len(indices) == indptr[-1]:
            raise ValueError(f"a pickled {self.what} of shape {tuple(shape)} has inconsistent data "
                             f"({len(data)}), indices ({len(indices)}) and indptr ({len(indptr)})")
        dense = np.zeros(shape, dtype=data.dtype)
        np.add.at(dense, (indices, np.repeat(np.arange(shape[1]), np.diff(indptr))), data)  # duplicates add up
        return dense


STAND_INS: dict[tuple[str, str], Any] = {
    ("chumpy.ch", "Ch"): _Ch,
    ("chumpy.reordering", "Select"): _Select,
    ("scipy.sparse.csc", "csc_matrix"): _CscMatrix,
    ("scipy.sparse._csc", "csc_matrix"): _CscMatrix,
    ("__builtin__", "set"): set,  # Python 2's name (fix_imports maps it only in the default find_class)
    ("builtins", "set"): set,
}


def _as_array(value: Any) -> np.ndarray:
    return value.array() if isinstance(value, _PickledObject) else np.asarray(value)


def read_official_model(source: Path) -> dict[str, Any]:
    """The dict an official SMPL / MANO pickle holds, chumpy and sparse values as numpy arrays;
    values that are neither arrays nor strings (metadata dicts) are dropped."""
    try:
        with source.open("rb") as file:
            data = RestrictedUnpickler(file, f"SMPL/MANO model file ({source})", STAND_INS, encoding="latin1").load()
    except UnsafePickleError:
        raise
    except OSError as error:
        raise ValueError(f"{source}: cannot read it ({error.strerror or error})") from error
    except Exception as error:  # truncated or not a pickle: any unpickling failure says the same
        raise ValueError(f"{source}: not a readable SMPL/MANO model pickle ({error!r}); is the download "
                         f"complete?") from error
    if not isinstance(data, dict):
        raise ValueError(f"{source}: not an SMPL/MANO model pickle (it holds a {type(data).__name__}, not a dict)")
    arrays: dict[str, Any] = {}
    for key, value in data.items():
        try:
            if isinstance(value, _PickledObject):
                value = value.array()
        except (ValueError, IndexError, TypeError) as error:
            raise ValueError(f"{source}: cannot rebuild {key!r}: {error}") from error
        if isinstance(value, str) or (isinstance(value, np.ndarray) and value.dtype != object):
            arrays[str(key)] = value
    return arrays


def _name_tokens(source: Path) -> set[str]:
    return set(re.split(r"[^a-z0-9]+", source.name.lower()))


def _from_name(source: Path, mapping: dict[str, str]) -> str | None:
    """The one value the file name's tokens name (``basicModel_f_lbs...`` -> female), else None."""
    found = {mapping[token] for token in _name_tokens(source) if token in mapping}
    return found.pop() if len(found) == 1 else None


def infer_model_type(source: Path, arrays: dict[str, Any]) -> str:
    """``mano`` for a file with a hand pose space, ``smpl`` for a 24-joint body; else an error."""
    if "hands_components" in arrays:
        return "mano"
    joints = np.shape(arrays.get("kintree_table", ()))
    if len(joints) == 2 and joints[1] == _SMPL_JOINTS:
        return "smpl"
    raise ValueError(f"{source}: cannot tell whether this is an SMPL or a MANO model file (kintree_table "
                     f"{joints}, keys {sorted(arrays)}); only SMPL and MANO are converted: pass --model-type")


def convert_body_model(source: Path, out_root: Path, model_type: str | None = None, gender: str | None = None,
                       side: str | None = None) -> tuple[Path, Path]:
    """Convert one official SMPL / MANO pickle into ``out_root/<model_type>/`` (pkl and npz).

    Args:
        source: the downloaded file.
        out_root: the folder passed to ``smplx.create`` (``smpl/`` or ``mano/`` is made in it).
        model_type: ``smpl`` or ``mano``; None: from the content (MANO holds ``hands_components``).
        gender: SMPL's ``neutral``, ``female`` or ``male``; None: from the file name.
        side: MANO's ``right`` or ``left``; None: from the file name.

    Returns:
        the written ``.pkl`` and ``.npz``. An existing file of that name is replaced (atomically,
        so converting ``out_root/smpl/SMPL_NEUTRAL.pkl`` in place works).
    """
    source, out_root = Path(source), Path(out_root)
    arrays = read_official_model(source)
    if model_type is None:
        model_type = infer_model_type(source, arrays)
    if model_type not in _REQUIRED:
        raise ValueError(f"{source}: model type must be one of {sorted(_REQUIRED)}, got {model_type!r}")
    missing = [key for key in _REQUIRED[model_type] if not isinstance(arrays.get(key), np.ndarray)]
    if missing:
        raise ValueError(f"{source}: not a {model_type.upper()} model file: {missing} missing (has {sorted(arrays)})")
    if model_type == "smpl":
        gender = gender or _from_name(source, _GENDER_TOKENS)
        if gender not in SMPL_GENDERS:
            raise ValueError(f"{source}: cannot tell the SMPL gender from the file name: pass --gender "
                             f"{'/'.join(SMPL_GENDERS)}")
        stem = f"SMPL_{gender.upper()}"
    else:
        side = side or _from_name(source, {name: name for name in MANO_SIDES})
        if side not in MANO_SIDES:
            raise ValueError(f"{source}: cannot tell the MANO hand from the file name: pass --side "
                             f"{'/'.join(MANO_SIDES)}")
        stem = f"MANO_{side.upper()}"
    folder = out_root / model_type
    folder.mkdir(parents=True, exist_ok=True)
    written = (folder / f"{stem}.pkl", folder / f"{stem}.npz")
    _replace(written[0], lambda file: pickle.dump(arrays, file, protocol=pickle.HIGHEST_PROTOCOL))
    _replace(written[1], lambda file: np.savez(file, **arrays))
    print(f"body-models: {source} -> {written[0]}, {written[1].name} ({model_type.upper()}, {len(arrays)} arrays)")
    return written


def _replace(path: Path, write: Any) -> None:
    """Write through a temporary file, then rename over ``path``: an interrupted run leaves no half file."""
    temporary = path.with_name(f".{path.name}.partial")
    try:
        with temporary.open("wb") as file:
            write(file)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)

"""Official SMPL / MANO pickles (Python 2, chumpy objects, scipy sparse regressors) convert without chumpy
into files that smplx and BodyModel load and pose as the source model; hostile or broken files are refused."""

import contextlib
import importlib.util
import io
import os
import pickle
import re
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import smplx
import torch

from body.model import BodyModel
from datamodules import safe_pickle
from tests.pickles import python2_dumps
from crocoman.convert.chumpy_models import convert_body_model
from crocoman.convert.labelled import load_body_model
from crocoman.synth.bodymodel import write_body_models
from crocoman.data import main

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# The downloads' names, and how each model type is loaded here.
OFFICIAL_NAMES = {"smpl": "basicModel_neutral_lbs_10_207_0_v1.0.0.pkl", "mano": "MANO_RIGHT.pkl"}
CONVERTED = {"smpl": "smpl/SMPL_NEUTRAL", "mano": "mano/MANO_RIGHT"}
LOAD_KWARGS = {"smpl": {}, "mano": {"use_pca": False, "flat_hand_mean": True}}
POSE = {"smpl": ("body_pose", 69), "mano": ("hand_pose", 45)}


def _foreign_class(module: str, name: str) -> type:
    """A class that pickles under a library's own name (``chumpy.ch.Ch``) without that library."""
    return type(name, (), {"__module__": module, "__qualname__": name})


Ch = _foreign_class("chumpy.ch", "Ch")
Select = _foreign_class("chumpy.reordering", "Select")
CscMatrix = _foreign_class("scipy.sparse.csc", "csc_matrix")
ChumpyAdd = _foreign_class("chumpy.ch_ops", "add")  # a chumpy expression the converter does not evaluate


@contextlib.contextmanager
def _importable(*classes: type):
    """Pickling checks that a class is found under its module: register the modules while dumping."""
    with pytest.MonkeyPatch.context() as patch:
        for cls in classes:
            parts = cls.__module__.split(".")
            for depth in range(1, len(parts) + 1):
                name = ".".join(parts[:depth])
                if name not in sys.modules:
                    patch.setitem(sys.modules, name, types.ModuleType(name))
            patch.setattr(sys.modules[cls.__module__], cls.__qualname__, cls, raising=False)
        yield


def official_dumps(data: dict, *extra: type) -> bytes:
    """``data`` pickled as the official Python 2 files are (protocol 2, SMPL's ``save_model``)."""
    with _importable(Ch, Select, CscMatrix, *extra):
        return python2_dumps(data)


def _state(cls: type, **fields) -> object:
    """An instance whose pickled state is ``fields`` plus chumpy's bookkeeping (``Ch.__getstate__``)."""
    obj = cls.__new__(cls)
    obj.__dict__.update({"_dirty_vars": set(fields) - {"x"}, "_itr": None, "_depends_on_deps": {},
                         "_make_dense": False, "_make_sparse": False, **fields})
    return obj


def ch(array: np.ndarray) -> object:
    return _state(Ch, x=np.asarray(array, np.float64))


def select(array: np.ndarray, rng: np.random.Generator) -> object:
    """MANO's shapedirs: a Select of the first components of a wider Ch."""
    wider = np.concatenate([array, rng.normal(size=array.shape)], axis=-1)
    idxs = np.arange(wider.size).reshape(wider.shape)[..., :array.shape[-1]].ravel()
    return _state(Select, a=ch(wider), idxs=idxs, preferred_shape=array.shape)


def csc(dense: np.ndarray) -> object:
    columns, rows = np.nonzero(dense.T)  # column-major, rows sorted within each column
    obj = CscMatrix.__new__(CscMatrix)
    obj.__dict__.update({
        "_shape": dense.shape, "maxprint": 50, "format": "csc", "_has_sorted_indices": True,
        "data": dense[rows, columns].astype(np.float64), "indices": rows.astype(np.int32),
        "indptr": np.concatenate([[0], np.cumsum(np.bincount(columns, minlength=dense.shape[1]))]).astype(np.int32),
    })  # fmt: skip
    return obj


@pytest.fixture(scope="module")
def synthetic_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("synthetic")
    with contextlib.redirect_stdout(io.StringIO()):
        write_body_models(root, ("smpl", "mano"))
    return root


def source_arrays(root: Path, model_type: str) -> dict[str, np.ndarray]:
    if model_type == "smpl":
        return pickle.loads((root / "smpl" / "SMPL_NEUTRAL.pkl").read_bytes())
    return dict(np.load(root / "mano" / "MANO_RIGHT.npz"))


def official_model(root: Path, model_type: str) -> dict:
    """The synthetic model laid out as the official file: float64 arrays, chumpy shapedirs, CSC regressors."""
    arrays = {key: value.astype(np.float64) if value.dtype.kind == "f" else value
              for key, value in source_arrays(root, model_type).items()}
    rng = np.random.default_rng(0)
    data = {**arrays, "J": arrays["J_regressor"] @ arrays["v_template"], "J_regressor": csc(arrays["J_regressor"]),
            "bs_style": "lbs", "bs_type": "lrotmin"}
    if model_type == "smpl":
        data |= {"shapedirs": ch(arrays["shapedirs"]), "J_regressor_prior": csc(arrays["J_regressor"]),
                 "weights_prior": arrays["weights"], "vert_sym_idxs": np.arange(len(arrays["v_template"])),
                 "pose_training_info": {"gender": "neutral", "bs_type": "lrotmin", "J_regressor_prior_wt": 10.0}}
    else:
        data["shapedirs"] = select(arrays["shapedirs"], rng)
    return data


@pytest.fixture(scope="module")
def converted(synthetic_root: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """Both official-style files converted through the CLI into one model folder, and what it printed."""
    downloads, out = tmp_path_factory.mktemp("downloads"), tmp_path_factory.mktemp("converted")
    files = []
    for model_type, name in OFFICIAL_NAMES.items():
        files.append(downloads / name)
        files[-1].write_bytes(official_dumps(official_model(synthetic_root, model_type)))
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        main(["body-models", "--convert", *map(str, files), "--out", str(out)])
    return out, printed.getvalue()


def test_the_stream_names_what_the_official_files_name(synthetic_root: Path) -> None:
    stream = official_dumps(official_model(synthetic_root, "mano"))
    for name in (b"chumpy.ch\nCh\n", b"chumpy.reordering\nSelect\n", b"scipy.sparse.csc\ncsc_matrix\n",
                 b"__builtin__\nset\n", b"numpy.core.multiarray\n_reconstruct\n"):
        assert name in stream
    assert stream[:2] == b"\x80\x02"
    with pytest.raises(ModuleNotFoundError, match="chumpy"):  # what smplx's pickle.load meets
        pickle.loads(stream, encoding="latin1")


@pytest.mark.parametrize("model_type", ["smpl", "mano"])
def test_converted_files_load_and_pose_as_the_source(synthetic_root: Path, converted: tuple[Path, str],
                                                    model_type: str) -> None:
    out, printed = converted
    assert f"{CONVERTED[model_type]}.pkl" in printed
    source = source_arrays(synthetic_root, model_type)
    pkl, npz = (out / f"{CONVERTED[model_type]}.{ext}" for ext in ("pkl", "npz"))
    plain = safe_pickle.load(pkl, "converted model")  # numpy arrays and strings only
    assert "pose_training_info" not in plain and plain["bs_style"] == "lbs"
    stored = np.load(npz, allow_pickle=False)
    for arrays in (plain, stored):
        for key in ("v_template", "shapedirs", "J_regressor", "posedirs", "weights"):
            np.testing.assert_array_equal(arrays[key], source[key])

    reference = smplx.create(str(synthetic_root), model_type=model_type,
                             ext="pkl" if model_type == "smpl" else "npz", **LOAD_KWARGS[model_type])
    model = smplx.create(str(out), model_type=model_type, ext="pkl", **LOAD_KWARGS[model_type])
    body = BodyModel(model_type, str(out))  # the npz
    generator = torch.Generator().manual_seed(1)
    name, size = POSE[model_type]
    betas, orient, pose = torch.randn(2, 10, generator=generator), torch.randn(2, 3, generator=generator) * 0.5, \
        torch.randn(2, size, generator=generator) * 0.3
    with torch.no_grad():
        rest = model().vertices[0]
        expected = reference(betas=betas, global_orient=orient, **{name: pose})
        posed = model(betas=betas, global_orient=orient, **{name: pose})
        body_vertices, body_joints = body.from_axis_angle(orient, pose, betas)
    torch.testing.assert_close(rest, torch.from_numpy(source["v_template"]).float(), atol=1e-6, rtol=0)
    torch.testing.assert_close(posed.vertices, expected.vertices, atol=1e-6, rtol=0)
    torch.testing.assert_close(posed.joints, expected.joints, atol=1e-6, rtol=0)
    torch.testing.assert_close(body_vertices, expected.vertices, atol=1e-5, rtol=0)
    torch.testing.assert_close(body_joints, expected.joints, atol=1e-5, rtol=0)


class _Run:
    """Unpickling it calls ``function(argument)``."""

    def __init__(self, function, argument: str) -> None:
        self.function, self.argument = function, argument

    def __reduce__(self):
        return self.function, (self.argument,)


@pytest.mark.parametrize("payload", ["os.system", "builtins.eval", "chumpy.ch_ops.add"])
def test_hostile_names_are_refused_and_nothing_runs(synthetic_root: Path, tmp_path: Path, payload: str) -> None:
    marker = tmp_path / "ran"
    data = official_model(synthetic_root, "smpl")
    hostile = {"os.system": lambda: _Run(os.system, f"touch {marker}"),
               "builtins.eval": lambda: _Run(eval, f"open({str(marker)!r}, 'w')"),
               "chumpy.ch_ops.add": lambda: _state(ChumpyAdd, a=data["shapedirs"], b=ch(np.ones(1)))}[payload]()
    data["shapedirs"] = _state(Ch, x=hostile)
    source = tmp_path / "SMPL_NEUTRAL.pkl"
    source.write_bytes(official_dumps(data, ChumpyAdd))
    with pytest.raises(safe_pickle.UnsafePickleError, match=rf"refusing to load .*{payload.split('.')[-1]}"):
        convert_body_model(source, tmp_path / "out")
    with pytest.raises(SystemExit, match=f"refusing .*{re.escape(str(source))}"):
        main(["body-models", "--convert", str(source), "--out", str(tmp_path / "out")])
    assert not marker.exists() and not (tmp_path / "out").exists()


def test_broken_or_foreign_files_get_an_error_naming_them(synthetic_root: Path, tmp_path: Path) -> None:
    stream = official_dumps(official_model(synthetic_root, "mano"))
    cases = {
        "MANO_RIGHT.pkl": (stream[:len(stream) // 2], "not a readable SMPL/MANO model pickle"),
        "notes.pkl": (b"hello, not a pickle", "not a readable SMPL/MANO model pickle"),
        "MANO_LEFT.pkl": (python2_dumps([1, 2]), "not an SMPL/MANO model pickle (it holds a list"),
        "SMPL_MALE.pkl": (python2_dumps({"v_template": np.zeros((3, 3))}), "cannot tell whether"),
        "hand.pkl": (stream, "cannot tell the MANO hand from the file name: pass --side"),
    }
    for name, (data, message) in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(SystemExit, match=re.escape(f"{tmp_path / name}: {message}")):
            main(["body-models", "--convert", str(tmp_path / name), "--out", str(tmp_path / "out")])
    with contextlib.redirect_stdout(io.StringIO()):
        main(["body-models", "--convert", str(tmp_path / "hand.pkl"), "--side", "left", "--out", str(tmp_path)])
    assert (tmp_path / "mano" / "MANO_LEFT.npz").is_file()
    (tmp_path / "body.pkl").write_bytes(official_dumps(official_model(synthetic_root, "smpl")))
    with pytest.raises(SystemExit, match=re.escape(f"{tmp_path / 'body.pkl'}: cannot tell the SMPL gender from the "
                                                   f"file name: pass --gender")):
        main(["body-models", "--convert", str(tmp_path / "body.pkl"), "--out", str(tmp_path)])
    with contextlib.redirect_stdout(io.StringIO()):
        main(["body-models", "--convert", str(tmp_path / "body.pkl"), "--gender", "female", "--out", str(tmp_path)])
    assert sorted(path.name for path in (tmp_path / "smpl").iterdir()) == ["SMPL_FEMALE.npz", "SMPL_FEMALE.pkl"]


@pytest.mark.skipif(importlib.util.find_spec("chumpy") is not None, reason="chumpy is installed: smplx loads the file")
def test_an_unconverted_official_file_names_the_conversion(synthetic_root: Path, tmp_path: Path) -> None:
    path = tmp_path / "smpl" / "SMPL_NEUTRAL.pkl"
    with pytest.raises(FileNotFoundError, match="crocoman-data body-models --convert DOWNLOADED.pkl"):
        BodyModel("smpl", str(tmp_path))
    path.parent.mkdir()
    path.write_bytes(official_dumps(official_model(synthetic_root, "smpl")))
    command = f"crocoman-data body-models --convert {path} --out {tmp_path}"
    expected = f"{re.escape(str(path))} is an official model file .*`{re.escape(command)}`"
    with pytest.raises(RuntimeError, match=expected):
        BodyModel("smpl", str(tmp_path))
    with pytest.raises(RuntimeError, match=re.escape(f"`{command}`")):
        load_body_model(tmp_path, "smpl")
    with contextlib.redirect_stdout(io.StringIO()):  # the command as named converts the file in place
        main(["body-models", "--convert", str(path), "--out", str(tmp_path)])
    assert BodyModel("smpl", str(tmp_path)).num_vertices == 6890
    assert smplx.create(str(tmp_path), model_type="smpl").v_template.shape == (6890, 3)

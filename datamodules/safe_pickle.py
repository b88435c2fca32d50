"""Reading the pickles datasets ship (3DPW sequences, AIST++ keypoints, 4D-Humans/HaMeR labels) without
running code from them.

Unpickling calls whatever importable function the stream names, so a crafted file runs code. These
files only need numpy's array reconstruction, dtypes and plain containers, numbers and strings (which
pickle builds without naming anything), so ``RestrictedUnpickler`` resolves those names and refuses
every other one with ``UnsafePickleError`` before it is called. Python 2 pickles (3DPW) name
``numpy.core.multiarray`` and hold arrays' bytes as ``str`` (read them with ``encoding="latin1"``);
numpy 2 moved the module to ``numpy._core``: both are accepted.
"""

import io
import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any, BinaryIO

NUMPY_GLOBALS: frozenset[tuple[str, str]] = frozenset(
    {
        (f"numpy{core}.{module}", name)
        for core in (".core", "._core")
        for module, name in (("multiarray", "_reconstruct"), ("multiarray", "scalar"), ("numeric", "_frombuffer"))
    }
    | {("numpy", "ndarray"), ("numpy", "dtype")}
    | {("_codecs", "encode")}  # how Python 3 writes bytes in protocol-2 pickles: a str and a codec name
)


class UnsafePickleError(pickle.UnpicklingError):
    """A pickle named a class or function outside what its file type needs."""


class RestrictedUnpickler(pickle.Unpickler):
    """Rebuilds numpy arrays and plain values; names in ``extra`` map to the given stand-ins (e.g. a
    class of a library we do not import); any other name is refused.

    Args:
        file: the pickle stream.
        what: the file type, for the error (``"3DPW sequence file"``).
        extra: ``(module, name) -> object`` to return for those names.
        encoding: how Python 2 ``str`` objects are decoded (``latin1`` for arrays pickled by Python 2).
    """

    def __init__(self, file: BinaryIO, what: str, extra: Mapping[tuple[str, str], Any] | None = None,
                 encoding: str = "ASCII") -> None:
        super().__init__(file, encoding=encoding)
        self.what = what
        self.extra = dict(extra or {})

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self.extra:
            return self.extra[(module, name)]
        if (module, name) in NUMPY_GLOBALS:
            return super().find_class(module, name)
        raise UnsafePickleError(f"refusing to load {module}.{name} from a {self.what}: such files hold only numpy "
                                f"arrays and plain values, and unpickling anything else could run code")


def load(file: BinaryIO | Path, what: str, extra: Mapping[tuple[str, str], Any] | None = None,
         encoding: str = "ASCII") -> Any:
    """The object pickled in ``file`` (an open binary file or a path), restricted as ``RestrictedUnpickler``."""
    if isinstance(file, Path):
        with file.open("rb") as opened:
            return RestrictedUnpickler(opened, what, extra, encoding).load()
    return RestrictedUnpickler(file, what, extra, encoding).load()


def loads(data: bytes, what: str, extra: Mapping[tuple[str, str], Any] | None = None, encoding: str = "ASCII") -> Any:
    """``load`` of a bytes object."""
    return load(io.BytesIO(data), what, extra, encoding)

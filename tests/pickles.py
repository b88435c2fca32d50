"""Pickles as datasets ship them: Python 2 streams (3DPW, the official SMPL/MANO files) and hostile ones."""

import os
import pickle
import struct
from io import BytesIO


class Exploit:
    """Unpickling it runs a shell command that prints ``pwned``."""

    def __reduce__(self):
        return (os.system, ("echo pwned",))


class _Python2Pickler(pickle._Pickler):
    """Protocol 2 as Python 2 wrote it: ``str`` and array bytes as Python 2 ``str`` (BINSTRING opcodes,
    not ``_codecs.encode`` calls) and numpy's modules under their numpy 1 names."""

    dispatch = pickle._Pickler.dispatch.copy()

    def save_python2_str(self, obj: str | bytes) -> None:
        data = obj.encode("latin1") if isinstance(obj, str) else obj
        if len(data) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(data)]) + data)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(data)) + data)
        self.memoize(obj)

    dispatch[str] = save_python2_str
    dispatch[bytes] = save_python2_str


def python2_dumps(obj: object) -> bytes:
    """``obj`` pickled as Python 2 with numpy 1 would have (load with ``encoding="latin1"``)."""
    buffer = BytesIO()
    _Python2Pickler(buffer, protocol=2).dump(obj)
    return buffer.getvalue().replace(b"cnumpy._core.", b"cnumpy.core.")

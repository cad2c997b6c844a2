"""Read a PyTorch state_dict file (.pth) into numpy arrays, without torch and without a general unpickler.

Two formats are understood, told apart by their first bytes:

* legacy (torch < 1.6): pickles one after another in the file -- the magic number, the protocol
  version, a sys-info dict, the state_dict (its tensors refer to storages through persistent ids),
  the list of storage keys -- and then the raw bytes of each storage in that key order, each
  preceded by its element count as a little-endian int64;
* zip (torch >= 1.6): ``<name>/data.pkl`` holds the state_dict, ``<name>/data/<key>`` each storage.

Every pickle is read by _Unpickler, whose find_class resolves only the handful of names these files
need (OrderedDict, torch._utils._rebuild_tensor_v2 and the typed storage classes) to harmless local
stand-ins and raises pickle.UnpicklingError for anything else, so a crafted file cannot import or
call anything (os.system, builtins.eval, ...).
"""

import collections
import io
import os
import pickle
import zipfile

import numpy as np

__all__ = ["load_state_dict"]

_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL = 1001

# torch.<Name>Storage -> the numpy dtype of its elements (all little-endian, as torch writes them).
_STORAGE_DTYPES = {
    "DoubleStorage": np.dtype("<f8"),
    "FloatStorage": np.dtype("<f4"),
    "HalfStorage": np.dtype("<f2"),
    "LongStorage": np.dtype("<i8"),
    "IntStorage": np.dtype("<i4"),
    "ShortStorage": np.dtype("<i2"),
    "CharStorage": np.dtype("i1"),
    "ByteStorage": np.dtype("u1"),
    "BoolStorage": np.dtype("?"),
}


class _StorageType:
    """What find_class returns for torch.<Name>Storage: only a marker of the element dtype."""

    def __init__(self, name):
        self.name, self.dtype = name, _STORAGE_DTYPES[name]


class _Storage:
    """A storage named by a persistent id; its bytes are attached later (legacy) or looked up (zip)."""

    def __init__(self, key, dtype, numel):
        self.key, self.dtype, self.numel = key, dtype, numel
        self.data = None  # 1-D numpy array of self.dtype, once read


class _TensorRef:
    """What _rebuild_tensor_v2 returns while the storage bytes may not be read yet."""

    def __init__(self, storage, offset, size, stride):
        self.storage, self.offset, self.size, self.stride = storage, offset, size, stride

    def to_numpy(self):
        data = self.storage.data
        if data is None:
            raise pickle.UnpicklingError(f"storage {self.storage.key!r} has no data")
        size, stride, offset = self.size, self.stride, self.offset
        if len(size) != len(stride) or any(n < 0 for n in size) or any(s < 0 for s in stride) or offset < 0:
            raise pickle.UnpicklingError(f"bad tensor layout: size {size}, stride {stride}, offset {offset}")
        if 0 in size:
            return np.zeros(size, dtype=data.dtype)
        last = offset + sum((n - 1) * s for n, s in zip(size, stride))
        if last >= data.size:
            raise pickle.UnpicklingError(f"tensor of size {size} reaches past its storage of {data.size} elements")
        item = data.itemsize
        view = np.lib.stride_tricks.as_strided(
            data[offset:], shape=size, strides=[s * item for s in stride], writeable=False
        )
        return np.array(view, dtype=data.dtype.newbyteorder("="), order="C")


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None, *rest):
    """Stand-in for torch._utils._rebuild_tensor_v2: record the layout, build nothing."""
    if not isinstance(storage, _Storage):
        raise pickle.UnpicklingError("a tensor refers to something that is not a storage")
    if not (isinstance(storage_offset, int) and isinstance(size, tuple) and isinstance(stride, tuple)):
        raise pickle.UnpicklingError("bad tensor arguments")
    if not all(isinstance(n, int) for n in size + stride):
        raise pickle.UnpicklingError("bad tensor arguments")
    return _TensorRef(storage, storage_offset, size, stride)


class _Unpickler(pickle.Unpickler):
    """An unpickler that knows only the names a state_dict file needs."""

    def __init__(self, file, storages=None):
        super().__init__(file)
        self._storages = storages  # key -> _Storage, shared by the pickles of one file; None: no ids allowed

    def find_class(self, module, name):
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _rebuild_tensor_v2
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}: not part of a PyTorch state_dict")

    def persistent_load(self, pid):
        if self._storages is None:
            raise pickle.UnpicklingError("unexpected persistent id")
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"):
            raise pickle.UnpicklingError("unsupported persistent id")
        _, storage_type, key, _location, numel, *view = pid
        if (
            not isinstance(storage_type, _StorageType)
            or not isinstance(key, str)
            or not isinstance(numel, int)
            or numel < 0
        ):
            raise pickle.UnpicklingError("bad storage reference")
        if view and view[0] is not None:
            raise pickle.UnpicklingError("storage views are not supported")
        storage = self._storages.get(key)
        if storage is None:
            storage = self._storages[key] = _Storage(key, storage_type.dtype, numel)
        elif storage.dtype != storage_type.dtype:
            raise pickle.UnpicklingError(f"storage {key!r} is referred to with two types")
        return storage


def load_state_dict(path) -> dict:
    """{name: numpy array} of the state_dict saved at path (legacy or zip PyTorch format).

    Raises pickle.UnpicklingError for a file that is not a plain state_dict of tensors or that
    names anything beyond what such a file needs, and OSError if it cannot be read.
    """
    with open(path, "rb") as file:
        head = file.read(4)
        file.seek(0)
        if head.startswith(b"PK\x03\x04"):
            return _load_zip(file)
        if head[:1] == b"\x80":  # a pickle's PROTO opcode: the legacy format
            return _load_legacy(file)
    raise pickle.UnpicklingError("not a PyTorch state_dict file (neither the legacy nor the zip format)")


def _load_legacy(file):
    magic = _Unpickler(file).load()
    if magic != _LEGACY_MAGIC:
        raise pickle.UnpicklingError("not a PyTorch file: wrong magic number")
    if _Unpickler(file).load() != _LEGACY_PROTOCOL:
        raise pickle.UnpicklingError("unsupported PyTorch file protocol version")
    sys_info = _Unpickler(file).load()
    if not isinstance(sys_info, dict) or not sys_info.get("little_endian", False):
        raise pickle.UnpicklingError("only little-endian PyTorch files are supported")
    storages = {}
    result = _Unpickler(file, storages).load()
    keys = _Unpickler(file).load()
    if not isinstance(keys, list) or sorted(keys) != sorted(storages):
        raise pickle.UnpicklingError("the storage key list does not match the tensors")
    for key in keys:
        storage = storages[key]
        count = np.frombuffer(_read_exactly(file, 8), dtype="<i8")[0]
        if count != storage.numel:
            raise pickle.UnpicklingError(f"storage {key!r} has {count} elements, {storage.numel} expected")
        nbytes = int(count) * storage.dtype.itemsize
        storage.data = np.frombuffer(_read_exactly(file, nbytes), dtype=storage.dtype)
    return _to_arrays(result)


def _load_zip(file):
    with zipfile.ZipFile(file) as archive:
        pickles = [name for name in archive.namelist() if name.endswith("/data.pkl") and name.count("/") == 1]
        if len(pickles) != 1:
            raise pickle.UnpicklingError("a zip PyTorch file holds exactly one <name>/data.pkl")
        prefix = pickles[0][: -len("data.pkl")]
        storages = {}
        result = _Unpickler(io.BytesIO(archive.read(pickles[0])), storages).load()
        for key, storage in storages.items():
            try:
                info = archive.getinfo(f"{prefix}data/{key}")
            except KeyError:
                raise pickle.UnpicklingError(f"storage {key!r} is missing from the archive") from None
            if info.file_size != storage.numel * storage.dtype.itemsize:
                raise pickle.UnpicklingError(
                    f"storage {key!r} has {info.file_size} bytes, not {storage.numel} elements"
                )
            storage.data = np.frombuffer(archive.read(info), dtype=storage.dtype)
    return _to_arrays(result)


def _read_exactly(file, count):
    if count > os.fstat(file.fileno()).st_size - file.tell():  # never allocate for bytes the file does not have
        raise pickle.UnpicklingError("the file is truncated")
    data = file.read(count)
    if len(data) != count:
        raise pickle.UnpicklingError("the file is truncated")
    return data


def _to_arrays(result):
    if not isinstance(result, dict):
        raise pickle.UnpicklingError("the file holds no state_dict (a dict of tensors)")
    arrays = {}
    for name, value in result.items():
        if not isinstance(name, str) or not isinstance(value, _TensorRef):
            raise pickle.UnpicklingError(f"entry {name!r} of the state_dict is not a tensor")
        arrays[name] = value.to_numpy()
    return arrays

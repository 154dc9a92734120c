"""Which globals a benign model file needs, and why each is safe to import.

The scanner judges every callable or object a pickle would import against this allowlist.
Each entry carries the reason it is safe: it only rebuilds data (a tensor, an array, a
container) or it is a class whose construction and ``__setstate__`` only store attributes.
Entries are exact ``(module, name)`` pairs, never patterns: a name an allowed package merely
re-exports is not allowed. (Inside TorchScript archives only, the archive's own ``__torch__``
classes pass: they are compiled from the ``code/`` the scanner reads and judges.)
Anything not listed is a finding. The denylist at the end does not decide anything; it only
grades how severe a finding is (a known way to run code is critical, anything else unknown is
high).
"""

from __future__ import annotations

from dataclasses import dataclass

from bastion.artifacts.scan._allowlist_frameworks import SKLEARN_CLASSES, TORCH_LAYERS
from bastion.artifacts.scan._types import Severity

__all__ = ["Allowed", "grade", "lookup"]


@dataclass(frozen=True)
class Allowed:
    """An allowlist entry: the framework that writes the global and why importing it is safe."""

    framework: str
    reason: str


_REBUILD = "rebuilds a tensor from a storage, shape and strides; runs no code from the file"
_STORAGE = "a typed storage class torch uses as a persistent-id tag; only names an element type"
_DTYPE = "a torch dtype/layout/memory-format constant; plain data"
_CONTAINER = "a builtin container or value type; constructing it runs no code from the file"
_NP_REBUILD = "rebuilds a numpy array or scalar from its dtype, shape and bytes"

_EXACT: dict[tuple[str, str], Allowed] = {}


def _add(framework: str, reason: str, module: str, *names: str) -> None:
    for name in names:
        _EXACT[(module, name)] = Allowed(framework, reason)


# --- Python builtins and the standard library ----------------------------------------------
_add(
    "python", _CONTAINER, "builtins",
    "set", "frozenset", "dict", "list", "tuple", "slice", "range", "complex", "bytearray",
    "bytes", "int", "float", "bool", "str", "object",
)
_add("python", "an ordered mapping; torch state_dicts and module attributes use it",
     "collections", "OrderedDict")
_add("python", "a dict subclass; its default factory must itself be allowlisted",
     "collections", "defaultdict")
_add("python", _CONTAINER, "collections", "Counter", "deque")
_add(
    "python",
    "protocol 0/1 object creation: instantiates a class passed as an argument, which is "
    "itself checked against this allowlist",
    "copyreg", "_reconstructor",
)
_add("python", "cls.__new__(cls, *args) for a class that is itself checked",
     "copyreg", "__newobj__", "__newobj_ex__")
_add("python", "protocol 2 writes bytes as _codecs.encode(text, 'latin1'); the scanner checks "
     "that the codec argument is latin-1", "_codecs", "encode")
_add("python", "plain value type", "datetime", "datetime", "date", "time", "timedelta",
     "timezone")
_add("python", "plain value type", "decimal", "Decimal")
_add("python", "plain value type", "fractions", "Fraction")

# --- torch -----------------------------------------------------------------------------------
_add(
    "torch", _REBUILD, "torch._utils",
    "_rebuild_tensor", "_rebuild_tensor_v2", "_rebuild_tensor_v3", "_rebuild_parameter",
    "_rebuild_parameter_with_state", "_rebuild_sparse_tensor", "_rebuild_nested_tensor",
    "_rebuild_qtensor", "_rebuild_meta_tensor_no_storage", "_rebuild_wrapper_subclass",
    "_rebuild_device_tensor_from_numpy", "_rebuild_device_tensor_from_cpu_tensor",
)
_add("torch", "re-applies a tensor subclass whose type is itself checked",
     "torch._tensor", "_rebuild_from_type_v2", "_rebuild_from_type")
_add("torch", _STORAGE, "torch",
     "FloatStorage", "DoubleStorage", "HalfStorage", "BFloat16Storage", "LongStorage",
     "IntStorage", "ShortStorage", "CharStorage", "ByteStorage", "BoolStorage",
     "ComplexFloatStorage", "ComplexDoubleStorage", "QUInt8Storage", "QInt8Storage",
     "QInt32Storage", "QUInt4x2Storage", "QUInt2x4Storage", "UntypedStorage")
_add("torch", _STORAGE, "torch.storage", "TypedStorage", "UntypedStorage", "_LegacyStorage")
_add("torch", _DTYPE, "torch",
     "float32", "float64", "float16", "bfloat16", "int64", "int32", "int16", "int8", "uint8",
     "bool", "complex64", "complex128", "float", "double", "half", "long", "int", "short",
     "float8_e4m3fn", "float8_e5m2", "strided", "sparse_coo", "sparse_csr", "sparse_csc",
     "sparse_bsr", "sparse_bsc", "_mkldnn", "contiguous_format", "channels_last",
     "channels_last_3d", "preserve_format", "per_tensor_affine", "per_channel_affine",
     "per_tensor_symmetric", "per_channel_symmetric", "per_channel_affine_float_qparams")
_add("torch", "a plain value type (shape or device name)", "torch", "Size", "device")
_add("torch", "maps a layout name to one of torch's layout constants, nothing else",
     "torch.serialization", "_get_layout")
_ACTIVATIONS = ("relu", "gelu", "silu", "tanh", "sigmoid", "leaky_relu", "elu", "selu", "celu",
                "softplus", "softsign", "softmax", "log_softmax", "mish", "hardswish",
                "hardsigmoid", "hardtanh", "relu6", "glu", "logsigmoid", "tanhshrink")
_add("torch", "an activation function stored as a layer attribute (e.g. the activation of "
     "TransformerEncoderLayer); pure tensor arithmetic", "torch.nn.functional", *_ACTIVATIONS)
_add("torch", "an activation function stored as a layer attribute; pure tensor arithmetic",
     "torch", "relu", "tanh", "sigmoid")
_add("torch", "the Parameter class; rebuilt around an already rebuilt tensor",
     "torch.nn.parameter", "Parameter", "Buffer")
_add("torch", "the Tensor class, used as a type tag when rebuilding", "torch", "Tensor")
_add("torch", "the Tensor class, used as a type tag when rebuilding", "torch._tensor", "Tensor")
_add("torch", "TorchScript pickles use these to rebuild lists and tensors",
     "torch.jit._pickle",
     "build_intlist", "build_tensorlist", "build_doublelist", "build_boollist",
     "build_tensor_from_id", "restore_type_tag")

# --- numpy -----------------------------------------------------------------------------------
for _np in ("numpy.core.multiarray", "numpy._core.multiarray"):
    _add("numpy", _NP_REBUILD, _np, "_reconstruct", "scalar")
for _np in ("numpy.core.numeric", "numpy._core.numeric"):
    _add("numpy", "rebuilds an array from an out-of-band buffer (pickle protocol 5)", _np,
         "_frombuffer")
_add("numpy", "the ndarray and dtype classes, used as type tags", "numpy", "ndarray", "dtype")
_add("numpy", "rebuilds a masked array (GridSearchCV.cv_results_ holds some) from classes "
     "that are themselves checked", "numpy.ma.core", "_mareconstruct", "MaskedArray")
_add("numpy", "the masked array class", "numpy.ma", "MaskedArray")
_add("numpy", "a random generator's state; rebuilt from plain integers",
     "numpy.random._pickle",
     "__randomstate_ctor", "__bit_generator_ctor", "__generator_ctor")
_add("numpy", "a random generator's state; rebuilt from plain integers",
     "numpy.random.bit_generator", "SeedSequence", "__pyx_unpickle_SeedSequence")
for _bg, _cls in (("_mt19937", "MT19937"), ("_pcg64", "PCG64"), ("_pcg64", "PCG64DXSM"),
                  ("_philox", "Philox"), ("_sfc64", "SFC64"), ("mtrand", "RandomState"),
                  ("_generator", "Generator")):
    _add("numpy", "a random generator class; its state is plain integers",
         f"numpy.random.{_bg}", _cls)

_SCALAR = "a numpy scalar type (estimators store dtypes such as numpy.float64 as parameters)"
_add("numpy", _SCALAR, "numpy",
     "float16", "float32", "float64", "longdouble", "int8", "int16", "int32", "int64",
     "uint8", "uint16", "uint32", "uint64", "intp", "uintp", "bool_", "complex64",
     "complex128", "str_", "bytes_", "object_", "datetime64", "timedelta64", "void",
     "longlong", "ulonglong", "single", "double", "half", "byte", "ubyte", "short", "ushort",
     "intc", "uintc", "generic", "number", "integer", "floating", "bool")
for _dt in ("Float16DType", "Float32DType", "Float64DType", "LongDoubleDType", "Int8DType",
            "Int16DType", "Int32DType", "Int64DType", "UInt8DType", "UInt16DType",
            "UInt32DType", "UInt64DType", "BoolDType", "Complex64DType", "Complex128DType",
            "StrDType", "BytesDType", "ObjectDType", "VoidDType", "DateTime64DType",
            "TimeDelta64DType", "StringDType", "LongDType", "ULongDType", "LongLongDType",
            "ULongLongDType", "ByteDType", "UByteDType", "ShortDType", "UShortDType",
            "IntDType", "UIntDType", "HalfDType", "DoubleDType", "FloatDType", "CLongDoubleDType"):
    _add("numpy", "a numpy dtype class", "numpy.dtypes", _dt)

# --- joblib ----------------------------------------------------------------------------------
_add("joblib", "joblib's placeholder for an array whose bytes follow the pickle opcode stream "
     "(the scanner skips them by the declared dtype and shape)",
     "joblib.numpy_pickle", "NumpyArrayWrapper")

# --- scipy -----------------------------------------------------------------------------------
for _fmt in ("csr", "csc", "coo", "bsr", "dia", "dok", "lil"):
    _add("scipy", "a sparse matrix class; its state is index and value arrays",
         f"scipy.sparse._{_fmt}", f"{_fmt}_matrix", f"{_fmt}_array")


# --- checkpoints people really have: Lightning, pandas, weight norm -------------------------
_add("python", "a plain attribute bag: Namespace(**kwargs) and BUILD only set attributes "
     "(Lightning checkpoints keep their hyper-parameters in one)", "argparse", "Namespace")
for _pl in ("pathlib", "pathlib._local"):
    _add("python", "a path value: constructing it joins strings and touches no file (Lightning "
         "checkpoints hold data and log folders)", _pl, "PosixPath", "WindowsPath",
         "PurePosixPath", "PureWindowsPath", "Path", "PurePath")
_add("torch", "the QUInt8/QInt8/QInt32/QUInt4x2 dtype constants of quantized tensors; plain data",
     "torch", "quint8", "qint8", "qint32", "quint4x2", "quint2x4")
_add("torch", "the hook object of torch.nn.utils.weight_norm/spectral_norm kept in a whole-model "
     "save: __new__ and BUILD restore its name/dim fields, it computes the weight on forward",
     "torch.nn.utils.weight_norm", "WeightNorm")
_add("torch", "the hook objects of torch.nn.utils.spectral_norm in a whole-model save; they only "
     "hold the parameter name and iteration settings",
     "torch.nn.utils.spectral_norm", "SpectralNorm", "SpectralNormStateDictHook",
     "SpectralNormLoadStateDictPreHook")
_PANDAS = ("a pandas container class: constructing it wraps already rebuilt arrays; its "
           "__setstate__ only stores them")
_add("pandas", _PANDAS, "pandas", "DataFrame", "Series", "Index", "RangeIndex", "MultiIndex",
     "Categorical", "CategoricalDtype", "StringDtype", "DatetimeTZDtype", "Timestamp",
     "Timedelta", "DatetimeIndex", "CategoricalIndex")
_add("pandas", _PANDAS, "pandas.arrays", "ArrowStringArray", "DatetimeArray", "StringArray",
     "TimedeltaArray", "Categorical")
_add("pandas", _PANDAS, "pandas.core.frame", "DataFrame")
_add("pandas", _PANDAS, "pandas.core.series", "Series")
_add("pandas", _PANDAS, "pandas.core.indexes.base", "Index")
_add("pandas", _PANDAS, "pandas.core.indexes.range", "RangeIndex")
_add("pandas", _PANDAS, "pandas.core.indexes.multi", "MultiIndex")
_add("pandas", _PANDAS, "pandas.core.arrays.categorical", "Categorical")
_add("pandas", _PANDAS, "pandas.core.arrays.datetimes", "DatetimeArray")
_add("pandas", _PANDAS, "pandas.core.arrays.string_", "StringDtype", "StringArray")
_add("pandas", _PANDAS, "pandas.core.arrays.string_arrow", "ArrowStringArray")
_add("pandas", _PANDAS, "pandas.core.dtypes.dtypes", "CategoricalDtype", "DatetimeTZDtype")
_add("pandas", "the block managers of a DataFrame/Series: hold blocks and axes, nothing more",
     "pandas.core.internals.managers", "BlockManager", "SingleBlockManager")
_add("pandas", "rebuilds an index as cls.__new__(cls, **data) for a class that is itself "
     "checked (a pandas index class)", "pandas.core.indexes.base", "_new_Index")
_add("pandas", "rebuilds a block from an array, its placement and ndim",
     "pandas._libs.internals", "_unpickle_block")
_add("pandas", "rebuilds a block from an array, its placement and ndim",
     "pandas.core.internals.blocks", "new_block")
_add("pandas", "Cython unpickling helper of pandas' array base class: restores its fields",
     "pandas._libs.arrays", "__pyx_unpickle_NDArrayBacked")
_add("pandas", "rebuilds a Timestamp from its integer value, timezone and unit",
     "pandas._libs.tslibs.timestamps", "_unpickle_timestamp")
_add("pyarrow", "rebuilds an Arrow array (pandas string columns) from its type, length and "
     "buffers; validates them and runs nothing else", "pyarrow.lib", "_restore_array")
_add("pyarrow", "wraps bytes as an Arrow buffer", "pyarrow.lib", "py_buffer")
_add("pyarrow", "maps a type alias such as 'string' to an Arrow data type",
     "pyarrow.lib", "type_for_alias")

# --- torch layers and scikit-learn classes: exact names, generated ---------------------------
# Only classes defined in the module that names them (scripts/gen_scan_allowlist.py), so a
# name a package re-exports is not allowed by being in an allowed package.
for _mod, _names in TORCH_LAYERS.items():
    _add("torch", "a standard torch.nn layer class; constructing it with __new__ and restoring "
         "its __dict__ runs no code from the file", _mod, *_names)
for _mod, _names in SKLEARN_CLASSES.items():
    _add("sklearn", "a scikit-learn class (or its Cython unpickling helper); estimators restore "
         "their attributes with BaseEstimator.__setstate__", _mod, *_names)

_TORCHSCRIPT_RULE = Allowed(
    "torchscript",
    "a TorchScript class compiled from the archive's code/ (only inside TorchScript archives)",
)


_UFUNC = Allowed("numpy", "a numpy ufunc (pure elementwise arithmetic), e.g. the func of a "
                  "FunctionTransformer")
_UFUNC_NAMES: frozenset[str] | None = None


def _numpy_ufuncs() -> frozenset[str]:
    global _UFUNC_NAMES
    if _UFUNC_NAMES is None:
        try:
            import numpy as np

            _UFUNC_NAMES = frozenset(n for n in dir(np) if isinstance(getattr(np, n, None),
                                                                       np.ufunc))
        except ImportError:  # pragma: no cover - numpy is a dependency
            _UFUNC_NAMES = frozenset()
    return _UFUNC_NAMES


def lookup(module: str, name: str, *, torchscript: bool = False) -> Allowed | None:
    """Return the allowlist entry for ``module.name``, or None when it is not allowlisted.

    >>> lookup("collections", "OrderedDict").framework
    'python'
    >>> lookup("os", "system") is None
    True
    """
    entry = _EXACT.get((module, name))
    if entry is not None:
        return entry
    if "." in name or not name:
        # dotted names walk attributes (``torch.serialization.os.system``): never allowlisted
        return None
    if module == "numpy" and name in _numpy_ufuncs():
        return _UFUNC
    if torchscript and (module == "__torch__" or module.startswith("__torch__.")):
        return _TORCHSCRIPT_RULE
    return None


# --- denylist: grades severity only ----------------------------------------------------------
_CRITICAL_MODULES = frozenset({
    "os", "posix", "nt", "subprocess", "sys", "runpy", "importlib", "pickle", "_pickle",
    "cPickle", "dill", "cloudpickle", "marshal", "shutil", "socket", "pty", "code", "codeop",
    "commands", "webbrowser", "ctypes", "_ctypes", "multiprocessing", "asyncio", "pdb", "bdb",
    "timeit", "cProfile", "profile", "trace", "doctest", "idlelib", "pydoc", "pip",
    "setuptools", "distutils", "venv", "ensurepip", "http", "urllib", "urllib2", "httplib",
    "requests", "aiohttp", "ftplib", "smtplib", "telnetlib", "zipimport", "pkgutil",
    "linecache", "tempfile", "glob", "io", "_io", "types",
    "_posixsubprocess", "signal", "threading", "_thread", "gc", "inspect", "ast", "compileall",
    "py_compile", "sqlite3", "uuid", "platform", "site", "sysconfig", "operator", "functools",
    "torch.hub", "torch.jit", "torch.serialization", "torch.utils.cpp_extension",
    "torch._dynamo", "torch._inductor", "torch.fx", "torch.package", "numpy.testing",
    "numpy.lib.format", "numpy.f2py", "joblib.numpy_pickle_compat", "yaml", "IPython",
})
_CRITICAL_NAMES = frozenset({
    "eval", "exec", "execfile", "compile", "__import__", "open", "getattr", "setattr",
    "delattr", "globals", "locals", "vars", "breakpoint", "input", "system", "popen", "spawn",
    "spawnl", "spawnv", "execv", "execve", "execl", "fork", "call", "check_call",
    "check_output", "run", "Popen", "load", "loads", "load_module", "import_module",
    "attrgetter", "methodcaller", "partial", "reduce", "apply", "runstring", "run_path",
    "run_module", "getoutput", "getstatusoutput", "remove", "unlink", "rmtree", "write",
    "_load_from_bytes", "__reduce__", "__reduce_ex__", "__getattribute__", "__subclasses__",
    "__globals__", "__builtins__", "__code__",
})


def grade(module: str, name: str) -> Severity:
    """Severity of importing a global that is not allowlisted.

    >>> grade("os", "system").label
    'critical'
    >>> grade("mypackage.layers", "Custom").label
    'high'
    """
    parts = module.split(".")
    for i in range(1, len(parts) + 1):
        if ".".join(parts[:i]) in _CRITICAL_MODULES:
            return Severity.CRITICAL
    if module in ("builtins", "__builtin__") and ("builtins", name) not in _EXACT:
        return Severity.CRITICAL
    if any(part in _CRITICAL_NAMES or part.startswith("__") for part in name.split(".")):
        return Severity.CRITICAL
    return Severity.HIGH


#: callables that unpickle (or otherwise load) a bytes argument; their argument is scanned too
NESTED_LOADERS = frozenset({
    ("pickle", "loads"), ("_pickle", "loads"), ("pickle", "_loads"), ("cPickle", "loads"),
    ("dill", "loads"), ("cloudpickle", "loads"), ("torch.storage", "_load_from_bytes"),
    ("numpy", "loads"), ("joblib", "load"), ("marshal", "loads"),
})

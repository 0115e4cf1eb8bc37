"""The legacy torch reader: round trips of synthetic files, refusal of malicious pickles."""

from __future__ import annotations

import io
import os
import pickle
import sys
import types
from collections import OrderedDict

import numpy as np
import pytest

from advjax.models import RestrictedUnpickler, StubGlobal, load_legacy_torch
from tests.models._reference import legacy_bytes

_DTYPE_TO_STORAGE = {np.dtype("float32"): "FloatStorage", np.dtype("int64"): "LongStorage",
                     np.dtype("float64"): "DoubleStorage"}


class _Storage:
    def __init__(self, key, arr):
        self.key, self.arr = key, np.ascontiguousarray(arr).ravel()


@pytest.fixture
def fake_torch(monkeypatch):
    """Stand-in ``torch`` / ``torch._utils`` modules, so ``pickle`` can write the torch globals."""
    torch = types.ModuleType("torch")
    utils = types.ModuleType("torch._utils")

    def _rebuild_tensor_v2(*args):  # never called by the reader
        raise AssertionError("the reader must not call pickled callables")

    _rebuild_tensor_v2.__module__ = "torch._utils"
    _rebuild_tensor_v2.__qualname__ = "_rebuild_tensor_v2"
    utils._rebuild_tensor_v2 = _rebuild_tensor_v2
    for name in set(_DTYPE_TO_STORAGE.values()):
        cls = type(name, (), {})
        cls.__module__ = "torch"
        setattr(torch, name, cls)
    torch._utils = utils
    monkeypatch.setitem(sys.modules, "torch", torch)
    monkeypatch.setitem(sys.modules, "torch._utils", utils)
    return torch


class _Tensor:
    def __init__(self, storage, offset, size, stride):
        self.args = (storage, offset, tuple(size), tuple(stride))

    def __reduce__(self):
        rebuild = sys.modules["torch._utils"]._rebuild_tensor_v2
        return rebuild, (*self.args, False, OrderedDict())


def _write(obj, storages, torch) -> bytes:
    out = io.BytesIO()

    class _Pickler(pickle.Pickler):
        def persistent_id(self, o):
            if isinstance(o, _Storage):
                st = getattr(torch, _DTYPE_TO_STORAGE[o.arr.dtype])
                return ("storage", st, o.key, "cpu", int(o.arr.size), None)
            return None

    _Pickler(out, protocol=2).dump(obj)
    return legacy_bytes(out.getvalue(), [s.key for s in storages], [s.arr for s in storages])


def test_round_trip_contiguous_strided_and_shared(fake_torch):
    rng = np.random.default_rng(0)
    a = rng.normal(size=(4, 3, 3, 3)).astype(np.float32)
    b = np.arange(12, dtype=np.int64)
    s_a, s_b = _Storage("1", a), _Storage("2", b)
    obj = {
        "model": OrderedDict([
            ("w", _Tensor(s_a, 0, a.shape, (27, 9, 3, 1))),
            # A transposed (non-contiguous) view and an offset view of the same storage.
            ("b_t", _Tensor(s_b, 0, (4, 3), (1, 4))),
            ("b_tail", _Tensor(s_b, 5, (7,), (1,))),
            ("scalar", _Tensor(s_b, 11, (), ())),
        ]),
        "options": {"lr": 0.1, "name": "x", "arch": [32, (1, 2)], "flag": True},
    }
    out = load_legacy_torch(_write(obj, [s_a, s_b], fake_torch))
    np.testing.assert_array_equal(out["model"]["w"], a)
    assert out["model"]["w"].dtype == np.float32
    np.testing.assert_array_equal(out["model"]["b_t"], b.reshape(3, 4).T)
    np.testing.assert_array_equal(out["model"]["b_tail"], b[5:])
    assert out["model"]["scalar"].shape == () and int(out["model"]["scalar"]) == 11
    assert isinstance(out["model"], OrderedDict) and list(out["model"]) == ["w", "b_t", "b_tail",
                                                                            "scalar"]
    assert out["options"] == {"lr": 0.1, "name": "x", "arch": [32, (1, 2)], "flag": True}


def test_load_from_path(tmp_path, fake_torch):
    s = _Storage("k", np.ones(5, np.float64))
    path = tmp_path / "t.pt"
    path.write_bytes(_write({"x": _Tensor(s, 0, (5,), (1,))}, [s], fake_torch))
    out = load_legacy_torch(path)
    np.testing.assert_array_equal(out["x"], np.ones(5))


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_malicious_reduce_is_refused_and_not_executed(tmp_path):
    marker = tmp_path / "pwned"
    payload = pickle.dumps({"model_params": OrderedDict(a=_Evil(marker))}, protocol=2)
    # The payload is live: plain pickle would run it.
    assert "system" in repr(payload)
    data = legacy_bytes(payload)
    refused = r"refusing to load global '(posix|nt|os)\.system'"
    with pytest.raises(pickle.UnpicklingError, match=refused):
        load_legacy_torch(data)
    assert not marker.exists()


@pytest.mark.parametrize("where", ["magic", "sys_info", "keys"])
def test_malicious_global_in_any_pickle_is_refused(tmp_path, where):
    marker = tmp_path / "pwned"
    evil = pickle.dumps(_Evil(marker), protocol=2)
    good = legacy_bytes(pickle.dumps({}, protocol=2))
    if where == "magic":
        data = evil + good
    elif where == "sys_info":
        parts = io.BytesIO(good)
        pickle.load(parts)
        pickle.load(parts)
        start = parts.tell()
        pickle.load(parts)
        data = good[:start] + evil + good[parts.tell():]
    else:
        data = good[:-len(pickle.dumps([], protocol=2))] + evil
    with pytest.raises((pickle.UnpicklingError, ValueError), match="system"):
        load_legacy_torch(data)
    assert not marker.exists()


def test_builtin_eval_and_unknown_stub_are_refused():
    evil = b"\x80\x02cbuiltins\neval\nX\x06\x00\x00\x001+1==2\x85R."
    with pytest.raises(pickle.UnpicklingError, match="builtins.eval"):
        load_legacy_torch(legacy_bytes(evil))
    # A reference to __main__.cifar10_preprocess is refused unless the caller stubs it.
    ref = b"\x80\x02}X\x04\x00\x00\x00archc__main__\ncifar10_preprocess\ns."
    with pytest.raises(pickle.UnpicklingError, match="__main__.cifar10_preprocess"):
        load_legacy_torch(legacy_bytes(ref))
    out = load_legacy_torch(legacy_bytes(ref), stubs=[("__main__", "cifar10_preprocess")])
    assert issubclass(out["arch"], StubGlobal) and out["arch"].name == "cifar10_preprocess"


def test_stub_instances_hold_plain_data():
    # REDUCE on a stub builds a harmless placeholder; BUILD stores the state.
    data = b"\x80\x02c__main__\ncifar10_preprocess\nK\x01\x85R}X\x01\x00\x00\x00aK\x02sb."
    obj = RestrictedUnpickler(io.BytesIO(data), stubs=[("__main__", "cifar10_preprocess")]).load()
    assert isinstance(obj, StubGlobal) and obj.args == (1,) and obj.state == {"a": 2}


def test_format_errors(fake_torch):
    s = _Storage("k", np.ones(5, np.float32))
    good = _write({"x": _Tensor(s, 0, (5,), (1,))}, [s], fake_torch)
    with pytest.raises(ValueError, match="truncated"):
        load_legacy_torch(good[:-4])
    with pytest.raises(ValueError, match="trailing"):
        load_legacy_torch(good + b"\x00")
    with pytest.raises(ValueError, match="magic"):
        load_legacy_torch(pickle.dumps(123, protocol=2) + good[len(pickle.dumps(
                0x1950A86A20F9469CFC6C, protocol=2)):])
    with pytest.raises(ValueError, match="zip"):
        load_legacy_torch(b"PK\x03\x04" + good)
    with pytest.raises(ValueError, match="little-endian"):
        load_legacy_torch(legacy_bytes(pickle.dumps({}, protocol=2), sys_info={"little_endian": 0}))
    # A tensor reading past its storage is refused.
    bad = _write({"x": _Tensor(s, 3, (5,), (1,))}, [s], fake_torch)
    with pytest.raises(pickle.UnpicklingError, match="past the end"):
        load_legacy_torch(bad)
    # A stride-0 tensor far larger than its storage (a memory bomb) is refused.
    bomb = _write({"x": _Tensor(s, 0, (10**6, 10**6), (0, 0))}, [s], fake_torch)
    with pytest.raises(pickle.UnpicklingError, match="more elements than its storage"):
        load_legacy_torch(bomb)


def test_persistent_ids_refused_outside_the_main_pickle():
    # BINPERSID in the sys-info position: no storage may be referenced there.
    pid_pickle = b"\x80\x02X\x07\x00\x00\x00storageX\x01\x00\x00\x00k\x86Q."
    good = legacy_bytes(pickle.dumps({}, protocol=2))
    parts = io.BytesIO(good)
    pickle.load(parts)
    pickle.load(parts)
    start = parts.tell()
    pickle.load(parts)
    with pytest.raises(pickle.UnpicklingError, match="persistent id"):
        load_legacy_torch(good[:start] + pid_pickle + good[parts.tell():])

"""The capture registry and the side protocol: which adapter takes which model, and what every side provides."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

import xfdiff
from xfdiff.capture import registry
from xfdiff.capture.base import CaptureSide, SinkSide, StreamingSide
from xfdiff.errors import ModelTypeError

sys.path.insert(0, str(Path(__file__).parent))
from toy_models import pair  # noqa: E402

CAPTURE = Path(xfdiff.__file__).parent / "capture"


def _tap_fn(x):
    return xfdiff.tap("double", x * 2)


class _Nnx(nnx.Module):
    def __init__(self):
        self.fc = nnx.Linear(4, 4, rngs=nnx.Rngs(0))

    def __call__(self, x):
        return self.fc(x)


def _models():
    pt, linen, x = pair(d=4, n=1)
    return {
        "torch": (pt, "reference", x),
        "linen": (linen, "port", x),
        "nnx": (_Nnx(), "port", x),
        "jaxfn": (_tap_fn, "port", x),
    }


@pytest.mark.parametrize("name", ["torch", "linen", "nnx", "jaxfn"])
def test_each_model_kind_gets_its_adapter_and_a_side_that_fits_the_protocol(name):
    model, slot, x = _models()[name]
    assert registry.adapter_for(model, slot).name == name
    side = registry.side_for(model, x, slot)
    assert isinstance(side, CaptureSide)
    assert isinstance(side.supports_streaming, bool) and isinstance(side.supports_sink, bool)
    assert side.supports_streaming == isinstance(side, StreamingSide)
    if side.supports_sink:
        assert isinstance(side, SinkSide)
    trace = side.capture()
    assert trace.records and trace.side == side.name and side.describe()


def test_a_function_with_its_params_is_a_tapped_function():
    params = {"w": jnp.ones((4, 4))}
    assert registry.adapter_for((lambda p, x: x @ p["w"], params), "port").name == "jaxfn"


def test_a_torch_module_as_the_port_says_to_swap_the_arguments():
    pt, _, x = pair(d=4, n=1)
    with pytest.raises(ModelTypeError, match="PyTorch model first"):
        registry.side_for(pt, x, "port")


def test_a_port_as_the_reference_names_what_is_expected_and_the_swap():
    _, linen, x = pair(d=4, n=1)
    with pytest.raises(ModelTypeError, match="torch.nn.Module") as info:
        registry.side_for(linen, x, "reference")
    assert "first" in str(info.value)


@pytest.mark.parametrize("bad", [42, "model.msgpack", {"params": {}}, torch.nn.Linear])
def test_unsupported_ports_list_every_supported_kind(bad):
    with pytest.raises(ModelTypeError) as info:
        registry.side_for(bad, np.zeros(2), "port")
    msg = str(info.value)
    assert "FlaxPreTrainedModel" in msg and "nnx.Module" in msg and "xfdiff.tap" in msg


def test_every_adapter_module_provides_accepts_and_make_side():
    for ad in registry.ADAPTERS:
        mod = ad.load()
        assert callable(mod.accepts) and callable(mod.make_side), ad.module
        assert ad.module.startswith("xfdiff.capture.from_")


def test_no_adapter_imports_another_adapter():
    for path in CAPTURE.glob("from_*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                target = (node.module or "").split(".")[-1]
                assert not target.startswith("from_"), f"{path.name} imports {node.module}"
                if node.module in (None, "capture", "xfdiff.capture"):  # from . import from_linen
                    names = [a.name for a in node.names]
                    assert not any(n.startswith("from_") for n in names), f"{path.name} imports {names}"


def test_picking_an_adapter_imports_no_framework_the_user_has_not_imported():
    code = (
        "import sys\n"
        "from xfdiff.capture import registry\n"
        "for model in (42, lambda x: x, (print, {}), object()):\n"
        "    for slot in ('reference', 'port'):\n"
        "        registry.adapter_for(model, slot)\n"
        "print(sorted(m for m in ('torch', 'jax', 'flax', 'tensorflow', 'keras') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"

"""Hand-written Keras 3 ports of two small PyTorch models, compared by xfdiff.

Keras 3 reads ``KERAS_BACKEND`` once, when ``keras`` is first imported, so
each backend runs in its own process: ``KERAS_BACKEND=jax python
tests/keras_ports.py`` prints one JSON object with every scenario's result
(tests/test_keras.py runs it for ``jax`` and ``tensorflow``). Nothing here
runs at import time.

Models: an MLP block (Dense -> LayerNorm -> GELU -> Dense) as a subclassed
``keras.Model``, and a small convnet (stride-2 conv -> BatchNorm -> ReLU ->
global pool -> Dense) as a functional ``keras.Model``. Each port loads the
PyTorch weights; the bugs are the Keras defaults a port inherits when it
forgets to set them.
"""

from __future__ import annotations

import json
import sys

import numpy as np


def torch_models():
    import torch

    class Block(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1 = torch.nn.Linear(8, 32)
            self.ln = torch.nn.LayerNorm(32)
            self.fc2 = torch.nn.Linear(32, 8)

        def forward(self, x):
            return self.fc2(torch.nn.functional.gelu(self.ln(self.fc1(x))))

    class ConvNet(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 8, 3, stride=2, padding=1)
            self.bn = torch.nn.BatchNorm2d(8)
            self.head = torch.nn.Linear(8, 5)

        def forward(self, x):
            h = torch.relu(self.bn(self.conv(x)))
            return self.head(h.mean(dim=(2, 3)))

    torch.manual_seed(0)
    block = Block().eval()
    with torch.no_grad():
        block.fc1.weight.mul_(0.05)  # small pre-norm activations: LayerNorm's epsilon matters
    conv = ConvNet().eval()
    with torch.no_grad():  # trained-looking statistics with small variances: BatchNorm's epsilon matters
        conv.bn.running_mean.copy_(torch.linspace(-0.2, 0.2, 8))
        conv.bn.running_var.copy_(torch.linspace(2e-3, 8e-3, 8))
        conv.bn.weight.copy_(torch.linspace(0.5, 1.5, 8))
        conv.bn.bias.copy_(torch.linspace(-0.1, 0.1, 8))
        conv.conv.weight.mul_(0.1)
    return block, conv


def keras_block(pt, epsilon=1e-5, approximate=False):
    """Subclassed Keras port of ``Block``; ``epsilon``/``approximate`` are the knobs a port gets wrong."""
    import keras

    class Block(keras.Model):
        def __init__(self):
            super().__init__()
            self.fc1 = keras.layers.Dense(32)
            self.ln = keras.layers.LayerNormalization(epsilon=epsilon)
            self.fc2 = keras.layers.Dense(8)

        def call(self, x):
            return self.fc2(keras.ops.gelu(self.ln(self.fc1(x)), approximate=approximate))

    m = Block()
    m(np.zeros((1, 4, 8), np.float32))
    m.fc1.set_weights([_np(pt.fc1.weight).T, _np(pt.fc1.bias)])
    m.ln.set_weights([_np(pt.ln.weight), _np(pt.ln.bias)])
    m.fc2.set_weights([_np(pt.fc2.weight).T, _np(pt.fc2.bias)])
    return m


def keras_convnet(pt, bn_kwargs=None, same_padding=False):
    """Functional Keras port of ``ConvNet`` (channels_last); ``bn_kwargs={}`` keeps Keras's defaults."""
    import keras

    bn_kwargs = {"epsilon": 1e-5, "momentum": 0.9} if bn_kwargs is None else bn_kwargs
    x = inp = keras.Input((16, 16, 3))
    if same_padding:
        x = keras.layers.Conv2D(8, 3, strides=2, padding="same", name="conv")(x)
    else:
        x = keras.layers.ZeroPadding2D(1, name="pad")(x)
        x = keras.layers.Conv2D(8, 3, strides=2, name="conv")(x)
    x = keras.layers.BatchNormalization(name="bn", **bn_kwargs)(x)
    x = keras.layers.ReLU(name="relu")(x)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    out = keras.layers.Dense(5, name="head")(x)
    m = keras.Model(inp, out)
    m.get_layer("conv").set_weights([_np(pt.conv.weight).transpose(2, 3, 1, 0), _np(pt.conv.bias)])
    m.get_layer("bn").set_weights([_np(pt.bn.weight), _np(pt.bn.bias), _np(pt.bn.running_mean), _np(pt.bn.running_var)])
    m.get_layer("head").set_weights([_np(pt.head.weight).T, _np(pt.head.bias)])
    return m


def _np(t):
    return t.detach().cpu().numpy()


def summary(r) -> dict:
    fd = r.first_divergence
    return {
        "first_divergence": None if fd is None else fd.torch_path,
        "findings": [[f.pitfall, f.torch_path, f.evidence.get("recovered_eps")] for f in r.findings],
        "final_status": r.final.status if r.final is not None else None,
        "aligned": [r.meta["n_param_modules_aligned"], r.meta["n_param_modules_torch"]],
        "mode": r.meta["flax_meta"].get("capture_mode"),
        "pairs": {a: v["flax"] for a, v in r.meta["alignment"].items()},
    }


def run() -> dict:
    import keras

    import xfdiff

    block, conv = torch_models()
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 6, 8)).astype(np.float32)
    img = rng.standard_normal((2, 3, 16, 16)).astype(np.float32)
    img_nhwc = img.transpose(0, 2, 3, 1)
    out: dict = {"backend": keras.backend.backend()}
    cases = {
        "block_clean": (block, lambda: keras_block(block), x, None),
        "block_keras_ln_eps": (block, lambda: keras_block(block, epsilon=1e-3), x, None),
        "block_tanh_gelu": (block, lambda: keras_block(block, approximate=True), x, None),
        "conv_clean": (conv, lambda: keras_convnet(conv), img, img_nhwc),
        "conv_keras_bn_defaults": (conv, lambda: keras_convnet(conv, bn_kwargs={}), img, img_nhwc),
        "conv_same_padding": (conv, lambda: keras_convnet(conv, same_padding=True), img, img_nhwc),
    }
    for name, (pt, make, inputs, port_inputs) in cases.items():
        km = make()
        r = xfdiff.compare(pt, km, inputs, flax_inputs=port_inputs)
        out[name] = summary(r)
        out[name]["left_unchanged"] = not any("__call__" in vars(type(layer)) for layer in km._flatten_layers())
    # The reverse direction: the Keras model is the reference, the PyTorch model the port.
    import torch

    bad = torch_models()[0]
    bad.ln.eps = 1e-3
    r = xfdiff.compare(bad, keras_block(block), x, reference="keras")
    out["reverse_ln_eps"] = summary(r)
    del torch
    # Eager capture (jit=False) records the same calls and values as the traced one.
    r = xfdiff.compare(block, keras_block(block, epsilon=1e-3), x, jit=False)
    out["block_keras_ln_eps_eager"] = summary(r)
    out["errors"] = errors(block, conv, x, img)
    if keras.backend.backend() == "tensorflow":
        out["tf_function_call"] = tf_function_call(block, x)
    # Settings read before any forward pass: reduced-precision dtype policy, XLA-compiled model.
    port = keras_block(block)
    port.compile(jit_compile=True)
    out["jit_compile_findings"] = [f.pitfall for f in xfdiff.compare(block, port, x).findings]
    keras.config.set_dtype_policy("mixed_bfloat16")
    try:
        port = keras_block(block)
    finally:
        keras.config.set_dtype_policy("float32")
    r = xfdiff.compare(block, port, x)
    out["mixed_precision_findings"] = [f.pitfall for f in r.findings if f.confidence == "setting"]
    return out


def tf_function_call(block, x) -> dict:
    """A port whose own ``call`` is a ``tf.function``, already traced before xfdiff sees it."""
    import keras
    import tensorflow as tf

    import xfdiff

    class Block(keras.Model):
        def __init__(self):
            super().__init__()
            self.fc1 = keras.layers.Dense(32)
            self.ln = keras.layers.LayerNormalization()  # Keras's default epsilon, 1e-3
            self.fc2 = keras.layers.Dense(8)

        @tf.function
        def call(self, x):
            return self.fc2(tf.nn.gelu(self.ln(self.fc1(x))))

    m = Block()
    m(np.zeros((1, 4, 8), np.float32))
    m.fc1.set_weights([_np(block.fc1.weight).T, _np(block.fc1.bias)])
    m.ln.set_weights([_np(block.ln.weight), _np(block.ln.bias)])
    m.fc2.set_weights([_np(block.fc2.weight).T, _np(block.fc2.bias)])
    m(x)  # its graph is cached now, traced without xfdiff
    traced = vars(Block)["call"]
    out = summary(xfdiff.compare(block, m, x))
    out["left_unchanged"] = vars(Block)["call"] is traced and "__call__" not in vars(Block)
    return out


def errors(block, conv, x, img) -> dict:
    """Bad input: each case's error class and message; and the model left unchanged after a failed forward."""
    import keras

    import xfdiff

    out = {}

    class Unbuilt(keras.Model):
        def __init__(self):
            super().__init__()
            self.fc1 = keras.layers.Dense(32)

        def call(self, x):
            return self.fc1(x)

    port = keras_block(block)
    cases = {
        "never_built": lambda: xfdiff.compare(block, Unbuilt(), x),
        "wrong_rank": lambda: xfdiff.compare(conv, keras_convnet(conv), img, flax_inputs=img[0]),
        "keras_first": lambda: xfdiff.compare(port, block, x),
        "forward_raises": lambda: xfdiff.compare(block, port, x, flax_inputs=x[..., :5]),
        "bad_reference": lambda: xfdiff.compare(block, port, x, reference="jax"),
    }
    for name, fn in cases.items():
        try:
            fn()
            out[name] = None
        except Exception as e:
            out[name] = [type(e).__name__, isinstance(e, xfdiff.XfdiffError), str(e)]
    out["left_unchanged"] = not any("__call__" in vars(type(layer)) for layer in port._flatten_layers())
    return out


if __name__ == "__main__":
    sys.stdout.write("XFDIFF_RESULT " + json.dumps(run()) + "\n")

"""Checks of framework settings and model modes, run before any forward pass.

They read flags only and never change the models: torch modules left in
training mode (active dropout, BatchNorm on batch statistics), JAX's default
matmul precision on TPU (bf16 passes) or GPU (TF32), torch TF32 switches on
CUDA, and a float64 torch reference while ``jax_enable_x64`` is off. For a
TensorFlow/Keras model: TF32 on a visible GPU, a mixed-precision dtype policy,
tf-keras's global learning phase left at 1 (training: dropout active), and a
model compiled with ``jit_compile=True``.
"""

from __future__ import annotations

import sys
from typing import Any

from ..report import Finding

ENV_IDS = (
    "dropout_active",
    "batchnorm_stats",
    "bf16_matmul",
    "tf32_matmul",
    "x64_disabled",
    "mixed_precision",
    "xla_jit_compile",
)
TF_ENV_IDS = ("mixed_precision", "xla_jit_compile")  # settings of a TensorFlow/Keras model only
CONFIDENCE = "setting"  # a setting that causes the pitfall, not yet seen in the numbers
DROPOUT_ATTRS = ("dropout", "dropout_p", "attention_dropout", "attn_dropout", "dropout_prob")
MAX_PATHS = 5


def environment_checks(pt_model: Any, flax_model: Any) -> list[Finding]:
    """Findings about settings that make the two sides differ, before running anything.

    Args:
        pt_model: the PyTorch model (read only).
        flax_model: the Flax model (read only).

    Returns:
        Findings with ``confidence="setting"``; empty when nothing is set up
        to differ.
    """
    out: list[Finding] = []
    for check in (_torch_training, _jax_precision, _torch_tf32, _x64, _keras_settings):
        try:
            out += check(pt_model, flax_model)
        except Exception:  # a check that cannot read a flag says nothing
            continue
    return out


def _finding(pitfall: str, torch_path: str | None, message: str, evidence: dict, fix: str) -> Finding:
    return Finding(
        pitfall=pitfall,
        torch_path=torch_path,
        flax_path=None,
        message=message,
        evidence=evidence,
        fix=fix,
        confidence=CONFIDENCE,
    )


def _torch_training(pt_model: Any, _flax: Any) -> list[Finding]:
    import torch

    if not isinstance(pt_model, torch.nn.Module):
        return []
    drop, bn = [], []
    for name, m in pt_model.named_modules():
        if not m.training:
            continue
        if isinstance(m, torch.nn.modules.dropout._DropoutNd) and m.p > 0:
            drop.append((name, float(m.p)))
        elif any(isinstance(getattr(m, a, None), float) and getattr(m, a) > 0 for a in DROPOUT_ATTRS):
            rate = next(
                getattr(m, a) for a in DROPOUT_ATTRS if isinstance(getattr(m, a, None), float) and getattr(m, a) > 0
            )
            drop.append((name, float(rate)))
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            bn.append((name, m.momentum))
    out = []
    if drop:
        paths = [p for p, _ in drop]
        out.append(
            _finding(
                "dropout_active",
                paths[0],
                f"The PyTorch model is in training mode: {len(drop)} dropout layer(s) are active "
                f"(first: {paths[0] or '(root)'}, p={drop[0][1]:g}), so outputs are random and scaled.",
                {"n_modules": len(drop), "paths": paths[:MAX_PATHS], "rate": drop[0][1]},
                "pt_model.eval()",
            )
        )
    if bn:
        paths = [p for p, _ in bn]
        out.append(
            _finding(
                "batchnorm_stats",
                paths[0],
                f"The PyTorch model is in training mode: {len(bn)} BatchNorm layer(s) normalise with batch statistics "
                "and update their running averages during the comparison.",
                {"n_modules": len(bn), "paths": paths[:MAX_PATHS]},
                "pt_model.eval()",
            )
        )
    return out


def _jax_precision(_pt: Any, _flax: Any) -> list[Finding]:
    if "jax" not in sys.modules:
        return []
    import jax

    backend = jax.default_backend()
    prec = jax.config.jax_default_matmul_precision
    low = prec is None or str(prec).lower() in ("default", "fastest", "bfloat16", "tensorfloat32", "bfloat16_3x")
    if not low:
        return []
    fix = "jax.config.update('jax_default_matmul_precision', 'highest')"
    if backend == "tpu":
        return [
            _finding(
                "bf16_matmul",
                None,
                "JAX runs on TPU with the default matmul precision: float32 matmuls and convolutions "
                "round their operands to bfloat16 (relative error ~2e-3 per layer).",
                {"backend": backend, "matmul_precision": str(prec)},
                fix,
            )
        ]
    if backend in ("gpu", "cuda", "rocm"):
        return [
            _finding(
                "tf32_matmul",
                None,
                "JAX runs on GPU with the default matmul precision: float32 matmuls and convolutions may "
                "use TF32 (10-bit mantissa, relative error ~3e-4 per layer).",
                {"backend": backend, "matmul_precision": str(prec)},
                fix,
            )
        ]
    return []


def _torch_tf32(pt_model: Any, _flax: Any) -> list[Finding]:
    import torch

    if not isinstance(pt_model, torch.nn.Module):
        return []
    on_cuda = any(p.is_cuda for p in pt_model.parameters())
    if not on_cuda:
        return []
    matmul = torch.backends.cuda.matmul.allow_tf32 or torch.get_float32_matmul_precision() != "highest"
    convs = torch.backends.cudnn.allow_tf32 and any(
        isinstance(m, torch.nn.modules.conv._ConvNd) for m in pt_model.modules()
    )
    if not (matmul or convs):
        return []
    what = " and ".join(w for w, on in (("matmuls", matmul), ("cuDNN convolutions", convs)) if on)
    return [
        _finding(
            "tf32_matmul",
            None,
            f"PyTorch runs on CUDA with TF32 allowed for {what}: float32 results carry ~1e-3 relative "
            "error against a full-precision port.",
            {
                "allow_tf32_matmul": bool(torch.backends.cuda.matmul.allow_tf32),
                "allow_tf32_cudnn": bool(torch.backends.cudnn.allow_tf32),
                "float32_matmul_precision": torch.get_float32_matmul_precision(),
            },
            "torch.backends.cuda.matmul.allow_tf32 = False; torch.backends.cudnn.allow_tf32 = False",
        )
    ]


def _x64(pt_model: Any, _flax: Any) -> list[Finding]:
    if "jax" not in sys.modules:
        return []
    import jax
    import torch

    if not isinstance(pt_model, torch.nn.Module) or jax.config.jax_enable_x64:
        return []
    if not any(p.dtype == torch.float64 for p in pt_model.parameters()):
        return []
    return [
        _finding(
            "x64_disabled",
            None,
            "The PyTorch reference is float64 but jax_enable_x64 is off: JAX silently computes the port "
            "in float32 (relative error ~1e-7 instead of ~1e-16).",
            {"reference_dtype": "float64", "jax_enable_x64": False},
            "jax.config.update('jax_enable_x64', True)  # before creating any array",
        )
    ]


def _keras_settings(_pt: Any, model: Any) -> list[Finding]:
    """Settings of a TensorFlow/Keras model (the second argument) that change its numbers."""
    from ..capture.from_keras import accepts, flavour

    if not accepts(model):
        return []
    out = []
    tf = sys.modules.get("tensorflow")
    if tf is not None and tf.config.list_physical_devices("GPU"):
        if tf.config.experimental.tensor_float_32_execution_enabled():
            out.append(
                _finding(
                    "tf32_matmul",
                    None,
                    "TensorFlow runs on GPU with TensorFloat-32 enabled (its default): float32 matmuls and "
                    "convolutions round their operands to a 10-bit mantissa (relative error ~1e-3 per layer).",
                    {"tensor_float_32_execution": True},
                    "tf.config.experimental.enable_tensor_float_32_execution(False)",
                )
            )
    policies = sorted({p for p in (_policy(x) for x in _layers(model)) if p and not p.startswith("float")})
    if policies:
        out.append(
            _finding(
                "mixed_precision",
                None,
                f"The Keras model computes in reduced precision (dtype policy {', '.join(policies)}): "
                "its layers cast inputs and weights to float16/bfloat16, so expect errors of ~1e-3 relative.",
                {"dtype_policies": policies},
                "keras.mixed_precision.set_global_policy('float32') before building the model, or dtype='float32'",
            )
        )
    if flavour(model) == "tf_keras":
        import tf_keras

        if tf_keras.backend.learning_phase() == 1:
            out.append(
                _finding(
                    "dropout_active",
                    None,
                    "tf-keras's global learning phase is 1 (training): dropout layers are active and "
                    "BatchNormalization uses batch statistics.",
                    {"learning_phase": 1},
                    "tf_keras.backend.set_learning_phase(0), or pass training=False",
                )
            )
    jit = getattr(model, "_jit_compile", None)
    if jit is True:
        out.append(
            _finding(
                "xla_jit_compile",
                None,
                "The Keras model is compiled with jit_compile=True: predict()/fit() run it through XLA, which "
                "fuses and reorders float operations (relative differences ~1e-6 against the eager forward that "
                "xfdiff captures).",
                {"jit_compile": True},
                "model.compile(..., jit_compile=False) to reproduce the numbers xfdiff measured",
            )
        )
    return out


def _layers(model: Any) -> list[Any]:
    try:
        return [model, *model._flatten_layers(include_self=False, recursive=True)]
    except Exception:
        return [model]


def _policy(layer: Any) -> str | None:
    p = getattr(layer, "dtype_policy", None) or getattr(layer, "_dtype_policy", None)
    name = getattr(p, "name", None)
    return str(name) if name else None

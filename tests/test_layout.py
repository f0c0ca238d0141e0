"""Legal layout transforms between the two frameworks (pure numpy)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from xfdiff.layout import best_transform, by_name, candidates, input_layout, param_transform

RNG = np.random.default_rng(0)


def _rand(*shape):
    return RNG.standard_normal(shape).astype(np.float32)


@pytest.mark.parametrize(
    "ref_shape, port_of, name",
    [
        ((2, 8, 5, 6), lambda a: np.moveaxis(a, 1, -1), "NCHW->NHWC"),
        ((2, 5, 6, 8), lambda a: np.moveaxis(a, -1, 1), "NHWC->NCHW"),
        ((2, 3, 4, 5, 6), lambda a: np.moveaxis(a, 1, -1), "NCDHW->NDHWC"),
        ((2, 7, 12), lambda a: a.reshape(2, 7, 3, 4), "split_heads"),
        ((2, 7, 3, 4), lambda a: a.reshape(2, 7, 12), "merge_heads"),
        ((2, 3, 7, 4), lambda a: np.swapaxes(a, 1, 2).reshape(2, 7, 12), "BHTD->BT(HD)"),
        ((2, 7, 12), lambda a: np.swapaxes(a.reshape(2, 7, 3, 4), 1, 2), "BT(HD)->BHTD"),
        ((2, 3, 7, 4), lambda a: np.swapaxes(a, 1, 2), "BHTD<->BTHD"),
        ((2, 5, 9), lambda a: np.swapaxes(a, -1, -2), "transpose_last2"),
        ((2, 5, 9), lambda a: a.reshape(10, 9), "merge_leading"),
        ((10, 9), lambda a: a.reshape(2, 5, 9), "split_leading"),
        ((1, 5, 9), lambda a: np.broadcast_to(a, (3, 5, 9)), "broadcast"),
        ((5, 1, 9), lambda a: a.reshape(5, 9), "squeeze"),
    ],
)
def test_each_legal_transform_is_recognised_and_inverts(ref_shape, port_of, name):
    ref = _rand(*ref_shape)
    port = port_of(ref)
    t, err = best_transform(ref, port)
    assert t.name == name and err < 1e-6
    np.testing.assert_array_equal(t.inverse(port), ref)


def test_equal_shapes_with_c_equal_h_equal_w_are_decided_by_values():
    ref = _rand(2, 4, 4, 4)
    assert best_transform(ref, np.moveaxis(ref, 1, -1))[0].name == "NCHW->NHWC"
    assert best_transform(ref, ref + 1e-7)[0].name == "identity"
    assert best_transform(ref, np.swapaxes(ref, -1, -2))[0].name == "transpose_last2"


def test_identity_keeps_its_place_when_no_transform_explains_a_buggy_port():
    ref = _rand(2, 4, 4, 4)
    buggy = ref + 0.5 * _rand(2, 4, 4, 4)
    assert best_transform(ref, buggy)[0].name == "identity"


def test_the_inputs_layout_settles_a_buggy_layer_with_symmetric_shapes():
    x = _rand(2, 4, 4, 4)
    hint = input_layout({"args.0": x}, {"args.0": np.moveaxis(x, 1, -1)})
    assert hint == "NCHW->NHWC"
    ref_out = _rand(2, 4, 4, 4)
    wrong = np.moveaxis(ref_out, 1, -1) + 0.8 * _rand(2, 4, 4, 4)  # a bug, still channels last
    assert best_transform(ref_out, wrong, prefer=hint)[0].name == "NCHW->NHWC"
    assert best_transform(ref_out, ref_out, prefer=hint)[0].name == "identity"  # values still overrule


def test_unbroadcast_only_when_the_batch_copies_are_equal():
    row = _rand(1, 5, 9)
    same = np.broadcast_to(row, (3, 5, 9)).copy()
    assert best_transform(same, row)[0].name == "unbroadcast"
    assert best_transform(_rand(3, 5, 9), row)[0] is None


def test_flattened_feature_map_in_nhwc_order_is_recognised():
    fmap = _rand(2, 4, 3, 3)  # N, C, H, W
    t, err = best_transform(fmap.reshape(2, -1), np.moveaxis(fmap, 1, -1).reshape(2, -1))
    assert t.name == "flatten(NCHW->NHWC)[C=4,H=W=3]" and err < 1e-6


def test_shapes_that_fit_no_transform_give_none():
    assert candidates((2, 3, 5), (2, 4, 5)) == []
    assert best_transform(_rand(2, 3, 5), _rand(2, 4, 5)) == (None, float("inf"))
    assert by_name("NCHW->NHWC", (2, 3, 5), (2, 4, 5)) is None


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(1, 4), min_size=2, max_size=5))
def test_every_candidate_maps_the_shape_and_inverts(shape):
    ref = np.arange(int(np.prod(shape)), dtype=np.float64).reshape(shape)
    for port_shape in {tuple(shape), tuple(shape[::-1]), tuple(shape[:1] + shape[2:] + shape[1:2])}:
        for t in candidates(ref.shape, port_shape):
            if t.valid is not None and not t.valid(ref):
                continue
            out = t.forward(ref)
            assert out.shape == port_shape
            np.testing.assert_array_equal(t.inverse(out), ref)


@pytest.mark.parametrize(
    "make, name",
    [
        (lambda w: w.copy(), "identity"),
        (lambda w: w.T.copy(), "transpose"),
        (lambda w: w.T.reshape(6, 2, 2), "transpose+reshape"),
        (lambda w: w.reshape(2, 2, 6), "reshape"),
        (lambda w: RNG.permutation(w.ravel()).reshape(6, 4), "permuted"),
    ],
)
def test_param_transform_names_the_change(make, name):
    w = _rand(4, 6)
    assert param_transform(w, make(w)) == name


def test_param_transform_recognises_conv_kernel_layout_and_rejects_other_values():
    k = _rand(8, 3, 3, 3)  # OIHW
    assert param_transform(k, k.transpose(2, 3, 1, 0)) == "OIHW->HWIO"
    assert param_transform(k, k.transpose(2, 3, 1, 0) + 1e-2) is None
    assert param_transform(k, _rand(9, 8)) is None


def test_fingerprint_coincidence_is_rejected_by_the_value_check():
    from xfdiff.align import confirm_params, fingerprint

    a = np.array([-1.0, -0.5, 0.0, 0.5, 1.0])
    b_mid = np.roots([1.0, -0.2, -0.21])  # with -0.2: the same sum, sum of squares, min and max
    b = np.array([-1.0, -0.2, *b_mid, 1.0])
    assert fingerprint(a).close(fingerprint(b))
    assert confirm_params({"w": a}, {"w": b}, 1.0)[0] < 0.5
    assert confirm_params({"w": a}, {"w": a[::-1].copy()}, 1.0) == (1.0, "permuted")

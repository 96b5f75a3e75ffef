"""2:4 sparsity detection on the real demo models' weights and on pruned copies of them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from agent.models.sparsity import (
    MIN_SPARSE_FRACTION,
    is_2to4_sparse,
    prune_2to4,
    prune_model_2to4,
    sparsity_report,
)

MODELS = Path(__file__).resolve().parents[2] / "demo" / "models"
DEMO_MODELS = ["text-det-v4", "text-det-v6", "orientation-0.0.11"]

needs_demo = pytest.mark.skipif(not MODELS.is_dir(), reason="demo models missing: make setup")


def test_groups_of_four_with_at_most_two_nonzeros_are_sparse():
    weight = np.array([[1.0, 0.0, 2.0, 0.0, 0.0, 0.0, 0.0, 3.0]], np.float32)
    assert is_2to4_sparse(weight, axis=1)
    weight[0, 1] = 5.0
    assert not is_2to4_sparse(weight, axis=1)


def test_sparsity_is_checked_along_the_given_axis_only():
    weight = np.zeros((4, 8, 3, 3), np.float32)
    weight[:, 0::4] = 1.0
    weight[:, 1::4] = 1.0
    assert is_2to4_sparse(weight, axis=1)
    assert not is_2to4_sparse(np.ones((4, 8, 3, 3), np.float32), axis=1)
    assert not is_2to4_sparse(weight, axis=0)


def test_a_ragged_last_group_counts_as_zero_padded():
    assert is_2to4_sparse(np.array([1, 0, 0, 1, 1, 1], np.float32), axis=0)
    assert not is_2to4_sparse(np.array([1, 0, 0, 1, 1, 1, 1], np.float32), axis=0)
    assert not is_2to4_sparse(np.array([1, 0, 0], np.float32), axis=0)


def test_pruning_keeps_the_two_largest_magnitudes_of_each_group():
    weight = np.array([[0.1, -0.9, 0.5, 0.2], [3.0, 1.0, -2.0, 0.0]], np.float32)
    pruned = prune_2to4(weight, axis=1)
    expected = np.array([[0.0, -0.9, 0.5, 0.0], [3.0, 0.0, -2.0, 0.0]], np.float32)
    np.testing.assert_array_equal(pruned, expected)
    assert is_2to4_sparse(pruned, axis=1)
    assert pruned.dtype == weight.dtype and pruned.shape == weight.shape


def test_pruning_along_a_middle_axis_with_a_ragged_group():
    rng = np.random.default_rng(7)
    weight = rng.standard_normal((5, 6, 3, 3)).astype(np.float32)
    pruned = prune_2to4(weight, axis=1)
    assert pruned.shape == weight.shape
    assert is_2to4_sparse(pruned, axis=1)
    kept = pruned != 0
    np.testing.assert_array_equal(pruned[kept], weight[kept])


@needs_demo
@pytest.mark.parametrize("name", DEMO_MODELS)
def test_the_demo_models_weights_are_dense(name):
    report = sparsity_report(onnx.load(str(MODELS / name / "model.onnx")))
    assert len(report.eligible) > 10
    assert report.sparse == ()
    assert report.fraction == 0.0
    assert not report.worth_flag


@needs_demo
@pytest.mark.parametrize("name", DEMO_MODELS)
def test_a_pruned_copy_of_a_demo_model_is_found_sparse(name):
    model = onnx.load(str(MODELS / name / "model.onnx"))
    report = sparsity_report(prune_model_2to4(model))
    assert report.sparse == report.eligible == sparsity_report(model).eligible
    assert report.fraction == 1.0 and report.worth_flag
    assert sparsity_report(model).sparse == (), "pruning must not touch the original"


@needs_demo
def test_the_pruned_text_detector_still_runs_and_keeps_its_shapes():
    model = onnx.load(str(MODELS / "text-det-v4" / "model.onnx"))
    pruned = prune_model_2to4(model)
    onnx.checker.check_model(pruned)
    x = np.random.default_rng(1).standard_normal((1, 3, 64, 96)).astype(np.float32)
    session = ort.InferenceSession(pruned.SerializeToString(), providers=["CPUExecutionProvider"])
    (prob,) = session.run(None, {"x": x})
    assert prob.shape == (1, 1, 64, 96)
    assert np.isfinite(prob).all()


@needs_demo
def test_one_small_sparse_layer_is_not_worth_the_flag():
    model = onnx.load(str(MODELS / "orientation-0.0.11" / "model.onnx"))
    smallest = min(sparsity_report(model).eligible, key=lambda name: _size(model, name))
    pruned = {init.name: init for init in prune_model_2to4(model).graph.initializer}
    mixed = onnx.ModelProto()
    mixed.CopyFrom(model)
    for init in mixed.graph.initializer:
        if init.name == smallest:
            init.CopyFrom(pruned[smallest])
    report = sparsity_report(mixed)
    assert report.sparse == (smallest,)
    assert 0 < report.fraction < MIN_SPARSE_FRACTION
    assert not report.worth_flag


def _size(model: onnx.ModelProto, name: str) -> int:
    init = next(i for i in model.graph.initializer if i.name == name)
    return int(np.prod(init.dims))

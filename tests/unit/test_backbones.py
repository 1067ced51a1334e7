"""Backbones: shapes, safe persistence, dimension checks."""

from __future__ import annotations

import io

import pytest
import torch
from hotswap.components.models.backbones import (
    BackboneSpec,
    ModelFormatError,
    build_model,
    count_parameters,
    load_model,
    model_from_bytes,
    model_to_bytes,
    require_same_dim,
    save_model,
)


def _model(arch="small", d=16, classes=5, seed=0):
    torch.manual_seed(seed)
    return build_model(BackboneSpec(arch=arch, embedding_dim=d, num_classes=classes))


def test_embeddings_are_unit_norm_and_logits_have_one_column_per_class():
    model = _model("large", d=32, classes=10).eval()
    emb, logits = model(torch.rand(4, 1, 28, 28))
    assert emb.shape == (4, 32) and logits.shape == (4, 10)
    assert torch.allclose(emb.norm(dim=1), torch.ones(4), atol=1e-5)


def test_large_backbone_has_clearly_more_capacity_than_small():
    assert count_parameters(_model("large")) > 3 * count_parameters(_model("small"))


def test_save_and_load_round_trip_bit_exactly(tmp_path):
    model = _model().eval()
    loaded = load_model(save_model(model, tmp_path / "m"))
    for (name, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    x = torch.rand(3, 1, 28, 28)
    assert torch.equal(model.embed(x), loaded.embed(x))
    assert loaded.spec == model.spec


class _Payload:
    def __reduce__(self):
        return (print, ("executed!",))


def test_pickled_object_instead_of_weights_is_refused(tmp_path):
    files = model_to_bytes(_model())
    buffer = io.BytesIO()
    torch.save({"weights": _Payload()}, buffer, pickle_protocol=2)
    files["model.pt"] = buffer.getvalue()
    with pytest.raises(ModelFormatError, match="refused by the weights-only loader"):
        model_from_bytes(files, source="tampered")


def test_weights_that_do_not_match_the_spec_are_refused():
    files = model_to_bytes(_model("small"))
    files["spec.json"] = model_to_bytes(_model("large"))["spec.json"]
    with pytest.raises(ModelFormatError, match="weights do not match spec 'large'"):
        model_from_bytes(files)


def test_missing_spec_is_named(tmp_path):
    save_model(_model(), tmp_path)
    (tmp_path / "spec.json").unlink()
    with pytest.raises(ModelFormatError, match="missing spec.json"):
        load_model(tmp_path)


def test_unknown_architecture_is_a_clear_error():
    with pytest.raises(ModelFormatError, match="unknown architecture 'resnet9000'"):
        build_model(BackboneSpec(arch="resnet9000", num_classes=3))


def test_embedding_dim_mismatch_between_old_and_new_is_a_clear_error():
    with pytest.raises(ModelFormatError, match="old model has d=16, new model has d=32"):
        require_same_dim(_model(d=16), _model("large", d=32))

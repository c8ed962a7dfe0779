"""Named weights as registry metadata: the one construction path ``create_model(name, weights=...)``, the
cache, hash, offline and bad-file errors. Weights are registered for ``detforge_n`` by the test itself, with a
``file://`` URL to a file it writes: no network."""

from __future__ import annotations

import pytest
import torch

from detforge.models.pretrained import WeightMappingError
from detforge.models.registry import create_model, model_recipe
from detforge.models.weights import (
    _WEIGHTS,
    Weights,
    WeightsUnavailableError,
    cached_path,
    get_weights,
    list_weights,
    register_weights,
    resolve_file,
)

NAMES = ("cat", "dog", "bird")  # conftest's named_weights


@pytest.fixture
def registered(named_weights):
    return named_weights


def test_a_tag_downloads_into_the_cache_and_loads_exactly(registered):
    reference, weights = registered
    model = create_model("detforge_n", weights="test")
    assert cached_path(weights).is_file() and cached_path(weights).parent.name == "checkpoints"
    for key, value in reference.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key
    assert model.num_classes == 3 and model.class_names == NAMES and model.category_ids == (1, 3, 7)
    assert model.preprocess == weights.preprocess and model.score_thresh == 0.01
    assert list_weights("detforge_n") == [("detforge_n", "test")] and get_weights("detforge_n", "test") is weights


def test_a_path_in_the_weights_layout_loads_through_the_converter(registered, tmp_path):
    reference, weights = registered
    model = create_model("detforge_n", weights=weights.url.removeprefix("file://"))
    assert all(torch.equal(model.state_dict()[k], v) for k, v in reference.state_dict().items())


def test_other_classes_start_the_class_layer_anew(registered):
    """Fine-tuning: a num_classes other than the weights' loads everything but the class layer."""
    reference, _ = registered
    model = create_model("detforge_n", weights="test", num_classes=5)
    assert model.num_classes == 5 and model.reinitialized
    own = model.state_dict()
    for key, value in reference.state_dict().items():
        if key in model.reinitialized:
            assert own[key].shape != value.shape
        else:
            assert torch.equal(own[key], value), key
    assert not hasattr(model, "class_names") or model.class_names != NAMES


def test_offline_without_a_cached_file_names_the_url_and_the_path(registered, monkeypatch):
    _, weights = registered
    monkeypatch.setenv("DETFORGE_OFFLINE", "1")
    with pytest.raises(WeightsUnavailableError) as err:
        create_model("detforge_n", weights="test")
    message = str(err.value)
    assert weights.url in message and str(cached_path(weights)) in message and "\n" not in message


def test_a_failed_download_says_where_to_put_the_file(registered, monkeypatch, tmp_path):
    _, weights = registered
    broken = Weights(**{**weights.__dict__, "url": f"file://{tmp_path}/missing/x-1234.pth"})
    monkeypatch.setitem(_WEIGHTS, "detforge_n", {"test": broken})
    with pytest.raises(WeightsUnavailableError, match="put it at .*checkpoints/x-1234.pth"):
        create_model("detforge_n", weights="test")
    assert not cached_path(broken).exists()  # no partial file left behind


def test_a_file_whose_hash_differs_is_refused(registered):
    _, weights = registered
    path = resolve_file(weights)
    path.write_bytes(path.read_bytes()[:-10] + b"0123456789")
    with pytest.raises(WeightsUnavailableError, match="does not match the registered"):
        create_model("detforge_n", weights="test")


def test_a_truncated_file_gets_one_line(registered, tmp_path):
    _, weights = registered
    source = weights.url.removeprefix("file://")
    bad = tmp_path / "truncated.pth"
    with open(source, "rb") as f:
        bad.write_bytes(f.read()[:1000])
    with pytest.raises(WeightMappingError, match="not a readable weight file") as err:
        create_model("detforge_n", weights=str(bad))
    assert str(bad) in str(err.value)


def test_a_mismatched_file_names_the_first_tensor_that_does_not_fit(registered, tmp_path):
    reference, _ = registered
    state = {"ref." + k: v for k, v in reference.state_dict().items()}
    key = next(k for k, v in state.items() if v.ndim == 4)
    state[key] = torch.zeros(1, 1, 1, 1)
    torch.save(state, tmp_path / "wrong.pth")
    with pytest.raises(WeightMappingError, match=f"tensor {key.removeprefix('ref.')!r} has shape"):
        create_model("detforge_n", weights=str(tmp_path / "wrong.pth"))
    del state[key]
    torch.save(state, tmp_path / "missing.pth")
    with pytest.raises(WeightMappingError, match=f"{key.removeprefix('ref.')!r} .* is missing"):
        create_model("detforge_n", weights=str(tmp_path / "missing.pth"))
    state[key] = reference.state_dict()[key.removeprefix("ref.")]
    state["ref.extra.weight"] = torch.zeros(2)
    torch.save(state, tmp_path / "extra.pth")
    with pytest.raises(WeightMappingError, match="'extra.weight' in the file has no place"):
        create_model("detforge_n", weights=str(tmp_path / "extra.pth"))


def test_unknown_tags_and_missing_files_are_named(registered):
    with pytest.raises(FileNotFoundError, match="neither a registered tag \\(test\\) nor a file"):
        create_model("detforge_n", weights="imagenet")
    with pytest.raises(ValueError, match="has no weights 'imagenet' \\(registered weights: test\\)"):
        get_weights("detforge_n", "imagenet")
    with pytest.raises(ValueError, match="already has weights"):
        register_weights("detforge_n", "test", registered[1])


def test_the_weights_recipe_goes_on_top_of_the_models(registered):
    assert model_recipe("detforge_n") == {"model.lr": 1e-2}
    assert model_recipe("detforge_n", "test") == {"model.lr": 5e-3, "model.optimizer": "sgd"}


def test_object_detector_takes_weights_and_their_class_names(registered, tmp_path):
    from detforge.models.detector import ObjectDetector

    reference, _ = registered
    module = ObjectDetector(model="detforge_n", weights="test", compile_model=False, deterministic=False)
    assert module.class_names == list(NAMES) and module.num_classes == 3
    assert all(torch.equal(module.model.state_dict()[k], v) for k, v in reference.state_dict().items())
    with pytest.raises(ValueError, match="needs a registered model name"):
        ObjectDetector(backbone="resnet18", weights="test", compile_model=False, deterministic=False)


@pytest.mark.parametrize("layout", [(1, 0, 1), (9, 0, 1), (1, 1, 1), (1, 1, 4), (6, 1, 1)])
def test_copy_class_rows_equals_a_plain_loop(layout):
    """Rows of kept classes come from the weights, by (group, class, row) index; the rest stay."""
    from detforge.models.weights import copy_class_rows

    groups, background, per = layout
    n_src, mapping = 5, [3, None, 0, 4]
    source = torch.randn(groups * (n_src + background) * per, 7)
    target = torch.randn(groups * (len(mapping) + background) * per, 7)
    out = copy_class_rows(target, source, layout, mapping)
    for g in range(groups):
        for c in range(len(mapping) + background):
            for r in range(per):
                row = (g * (len(mapping) + background) + c) * per + r
                if c < background:
                    expected = source[(g * (n_src + background) + c) * per + r]
                elif mapping[c - background] is None:
                    expected = target[row]
                else:
                    expected = source[(g * (n_src + background) + background + mapping[c - background]) * per + r]
                assert torch.equal(out[row], expected), (g, c, r)
    with pytest.raises(ValueError, match="does not fit"):
        copy_class_rows(target[:-1], source, layout, mapping)


def test_keep_classes_copies_the_rows_of_the_classes_the_weights_have(registered):
    """New classes ("Dog", "fish"): the dog row comes from the weights' "dog" (case-insensitive), the fish
    row starts anew; every other tensor is the weights'."""
    reference, _ = registered
    torch.manual_seed(5)
    fresh = create_model("detforge_n", num_classes=2)
    torch.manual_seed(5)
    model = create_model("detforge_n", weights="test", num_classes=2, keep_classes=["Dog", "fish"])
    assert model.kept_classes == ["Dog"]
    ref, own, new = reference.state_dict(), model.state_dict(), fresh.state_dict()
    for key in ("head.cls_logits.weight", "head.cls_logits.bias"):
        assert torch.equal(own[key][0], ref[key][1]) and torch.equal(own[key][1], new[key][1]), key
    with pytest.raises(ValueError, match="keep_classes has 1 names for num_classes=2"):
        create_model("detforge_n", weights="test", num_classes=2, keep_classes=["dog"])
    with pytest.raises(ValueError, match="keep_classes needs weights"):
        create_model("detforge_n", num_classes=2, keep_classes=["dog", "cat"])

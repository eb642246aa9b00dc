import pytest
import torch

from nn_speedups.models import REGISTRY, build_model, count_parameters, get_spec
from nn_speedups.models.convnext_seed import ConvNeXtSeed

EXPECTED_MODELS = {
    "convnext-seed",
    "resnet18",
    "resnet50",
    "densenet121",
    "mobilenet_v3_large",
    "shufflenet_v2_x1_0",
    "convnext_tiny",
    "bert-base",
}


def test_registry_holds_the_issue_models():
    assert EXPECTED_MODELS <= set(REGISTRY)


def test_convnext_seed_has_the_seed_parameter_count():
    assert count_parameters(ConvNeXtSeed(num_classes=200, image_size=224)) == 18_166_472


def test_convnext_seed_count_depends_on_input_size():
    # LayerNorms over [C, H, W]: 2*C*H*W affine parameters each, so a smaller input has fewer parameters
    assert count_parameters(ConvNeXtSeed(image_size=128)) < 18_166_472


def test_convnext_seed_structure():
    model = ConvNeXtSeed(image_size=64, activation="relu")
    blocks = [m for m in model.modules() if type(m).__name__ == "Block"]
    assert len(blocks) == 3 + 3 + 9 + 3
    assert all(isinstance(b.act, torch.nn.ReLU) for b in blocks)
    first = blocks[0]
    assert first.dwconv.groups == 64 and first.dwconv.out_channels == 256 and first.dwconv.kernel_size == (7, 7)
    assert first.norm.normalized_shape == (256, 16, 16)
    assert model.fc.in_features == 256 and model.fc.out_features == 200


def test_convnext_seed_rejects_sizes_it_cannot_downsample():
    with pytest.raises(ValueError, match="divisible by 32"):
        ConvNeXtSeed(image_size=100)


@pytest.mark.parametrize("name", sorted(EXPECTED_MODELS))
def test_every_model_builds_and_runs(name):
    spec = get_spec(name)
    model = build_model(spec, image_size=64)
    inputs = spec.example_inputs(2, 64, "cpu")
    with torch.inference_mode():
        out = model(*inputs)
    if spec.num_classes:
        assert out.shape == (2, spec.num_classes)
    else:
        assert out.shape == (2, 128, 768)  # bert-base: [B, T, hidden]
    assert torch.isfinite(out).all()


def test_builds_are_seeded_and_inputs_deterministic():
    spec = get_spec("resnet18")
    a, b = build_model(spec, 64), build_model(spec, 64)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert torch.equal(spec.example_inputs(2, 64)[0], spec.example_inputs(2, 64)[0])


def test_bert_inputs_are_token_ids_and_a_mask():
    ids, mask = get_spec("bert-base").example_inputs(4, 0, "cpu")
    assert ids.shape == mask.shape == (4, 128) and ids.dtype == torch.long
    assert ((ids >= 0) & (ids < 30522)).all()
    assert set(mask.unique().tolist()) <= {0, 1} and (mask[:, 0] == 1).all()


def test_unknown_model_names_the_valid_ones():
    with pytest.raises(ValueError, match="unknown model 'resnet9000'.*convnext-seed.*resnet18"):
        get_spec("resnet9000")


def test_weights_from_a_state_dict(tmp_path):
    spec = get_spec("convnext-seed")
    trained = build_model(spec, 64)
    with torch.no_grad():
        trained.fc.bias.fill_(0.5)
    torch.save(trained.state_dict(), tmp_path / "w.pt")
    loaded = build_model(spec, 64, weights=str(tmp_path / "w.pt"))
    assert torch.equal(loaded.fc.bias, torch.full((200,), 0.5))
    with pytest.raises(FileNotFoundError, match="no such file"):
        build_model(spec, 64, weights=str(tmp_path / "missing.pt"))


def test_pretrained_weights_only_from_the_local_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="not in the local torch hub cache"):
        build_model(get_spec("resnet18"), 64, weights="pretrained")
    with pytest.raises(ValueError, match="no pretrained weights"):
        build_model(get_spec("convnext-seed"), 64, weights="pretrained")


def test_activation_slot_only_where_the_model_has_one():
    with pytest.raises(ValueError, match="no activation slot"):
        build_model(get_spec("resnet18"), 64, activation="relu")

"""The image classifier on latents (engine/models/latent_stem_resnet.py): the image network's own stages after a
latent stem whose map has the shape of the image network's map at the latent's stride, under the same names."""

import pytest
import torch

from engine.errors import UsageError
from engine.models import build_model, load_pretrained
from engine.models.resnet import STAGES


@pytest.mark.parametrize("image_model", ["resnet18", "resnet50"])
@pytest.mark.parametrize("stride", [2, 4, 8, 16])
def test_the_stem_meets_the_image_network_at_its_stride_and_the_rest_is_the_image_network(image_model, stride):
    torch.manual_seed(0)
    image_size, latent = 64, 64 // stride
    image = build_model(image_model, 3, 5).eval()
    model = build_model(f"{image_model}-latent", 4, 5, latent_size=latent, image_size=image_size).eval()
    assert model.build_config["feature_stride"] == stride
    z, x = torch.randn(2, 4, latent, latent), torch.randn(2, 3, image_size, image_size)
    assert model.stem(z).shape == image.features(x, stride).shape
    assert model(z).shape == (2, 5)
    # every parameter but the stem's is one of the image network's, same name and shape
    image_params = {k: v.shape for k, v in image.state_dict().items()}
    for name, tensor in model.state_dict().items():
        if not name.startswith("stem."):
            assert image_params[name] == tensor.shape, name
    # with the image network's weights and a stem that outputs the image network's own map, it IS the network
    model.load_state_dict(model.rename_pretrained(image.state_dict()), strict=False)
    model.stem = torch.nn.Identity()
    assert torch.allclose(model(image.features(x, stride)), image(x), atol=1e-5)


def test_features_follow_the_networks_own_forward():
    torch.manual_seed(0)
    net = build_model("resnet18", 3, 4).eval()
    x = torch.randn(2, 3, 64, 64)
    deepest = net.features(x, 32)
    assert torch.allclose(net.fc(torch.flatten(net.avgpool(deepest), 1)), net(x))
    assert [s.stride for s in STAGES] == [2, 4, 4, 8, 16, 32]  # the max-pool's map is the first at stride 4


def test_an_image_checkpoint_initialises_it_by_name_and_only_the_stem_is_new(tmp_path):
    from safetensors.torch import save_file

    image = build_model("resnet18", 3, 5)
    save_file(image.state_dict(), tmp_path / "image.safetensors")
    model = build_model("resnet18-latent", 4, 5, latent_size=8, image_size=64)  # stride 8: layer1-2 replaced too
    loaded = load_pretrained(model, tmp_path / "image.safetensors")
    assert loaded.new and all(n.startswith("stem.") for n in loaded.new)
    assert torch.equal(model.layer3[0].conv1.weight, image.layer3[0].conv1.weight)
    assert not hasattr(model, "layer1") and not hasattr(model, "conv1")


def test_a_stride_no_resnet_has_is_a_one_line_error_naming_the_image_size():
    with pytest.raises(UsageError, match="needs an image size divisible by it .*--image-size; got 60"):
        build_model("resnet18-latent", 4, 2, latent_size=16, image_size=60)
    with pytest.raises(UsageError, match="a stride of 64; a ResNet joins at 2, 4, 8 or 16"):
        build_model("resnet18-latent", 4, 2, latent_size=4, image_size=256)

"""Tests of the models package: encoders, fusion heads, the registry and the AV model builder."""
from __future__ import annotations

import urllib.error

import pytest
import torch
import torchvision
from torch import nn

from models import FRAME_NETS, FUSION_HEADS, SOUND_NETS, AVModel, FusionHead, ModelOutput, build_model
from models.registry import Registry

B, C, IMG, L = 2, 5, 64, 4096
FRAME_DIM, SOUND_DIM = 32, 64
BUILTIN_HEADS = ["attention", "audio", "bilinear", "concat", "film", "gated", "late", "loc", "ssl", "ssl_avc",
                 "ssl_fnac", "ssl_lvs", "ssl_slavc", "ssl_slavc_enc", "sum", "visual"]
MODALITIES = {"audio": {"audio"}, "visual": {"visual"}}
MEAN = torch.tensor([0.485, 0.456, 0.406]).reshape(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).reshape(1, 3, 1, 1)


def small_model(head: str, sound: str = "anet", **kwargs) -> AVModel:
    return build_model("smallcnn", sound, head, cls_num=C, frame_dim=FRAME_DIM, sound_dim=SOUND_DIM, **kwargs)


def inputs(t: int = 1, size: int = IMG, length: int = L) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.rand(B, 3, t, size, size), torch.rand(B, 1, length) * 2 - 1


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def test_registries_hold_the_builtin_parts() -> None:
    assert FUSION_HEADS.names() == BUILTIN_HEADS
    assert FRAME_NETS.names() == ["poolcnn", "resnet18", "smallcnn"]
    assert SOUND_NETS.names() == ["anet", "mel", "stft"]


@pytest.mark.parametrize("head", BUILTIN_HEADS)
def test_every_head_gives_logits_and_the_right_features(head: str) -> None:
    model = small_model(head)
    used = MODALITIES.get(head, {"audio", "visual"})
    assert set(model.net_classifier.modalities) == used
    assert model.uses_visual == ("visual" in used) == (model.net_frame is not None)
    assert model.uses_audio == ("audio" in used) == (model.net_sound is not None)
    out = model(*inputs())
    assert isinstance(out, ModelOutput)
    assert out.logits.shape == (B, C)
    assert torch.isfinite(out.logits).all()
    if "visual" in used:
        assert out.feat_v.shape == (B, FRAME_DIM)
        assert out.fmap_v.shape == (B, FRAME_DIM, IMG // 16, IMG // 16)
    else:
        assert out.feat_v is None and out.fmap_v is None
    if "audio" in used:
        assert out.feat_a.shape == (B, SOUND_DIM)
    else:
        assert out.feat_a is None


@pytest.mark.parametrize("head", BUILTIN_HEADS)
def test_gradients_reach_only_the_raw_inputs_the_head_uses(head: str) -> None:
    model = small_model(head).eval()
    frames, audio = (x.requires_grad_() for x in inputs())
    model(frames, audio).logits.sum().backward()
    used = MODALITIES.get(head, {"audio", "visual"})
    for modality, x in (("visual", frames), ("audio", audio)):
        if modality in used:
            assert x.grad is not None and x.grad.abs().sum() > 0, modality
        else:
            assert x.grad is None, modality


@pytest.mark.parametrize("sound", ["stft", "mel"])
def test_spectrogram_front_ends_are_differentiable(sound: str) -> None:
    model = small_model("audio", sound).eval()
    _, audio = inputs()
    audio.requires_grad_()
    out = model(None, audio)
    assert out.feat_a.shape == (B, SOUND_DIM)
    out.logits.sum().backward()
    assert torch.isfinite(audio.grad).all() and audio.grad.abs().sum() > 0


def test_spectrogram_front_ends_use_the_stft_sizes() -> None:
    stft = SOUND_NETS.get("stft")(stft_frame=1022, stft_hop=256, dim=64)
    mel = SOUND_NETS.get("mel")(audRate=11025, stft_frame=1022, stft_hop=256, dim=64)
    wave = torch.rand(B, 1, 65535) * 2 - 1
    assert stft.spectrogram(wave).shape == (B, 512, 256)
    assert mel.spectrogram(wave).shape == (B, 64, 256)
    assert mel.mel_filters.shape == (64, 512)


@pytest.mark.parametrize("arch", ["poolcnn", "resnet18", "smallcnn"])
def test_imagenet_normalisation_happens_inside(arch: str) -> None:
    net = FRAME_NETS.get(arch)().eval()
    frames = torch.rand(B, 3, 1, IMG, IMG)
    feat, fmap = net(frames)
    expected = net.features((frames[:, :, 0] - MEAN) / STD)
    torch.testing.assert_close(fmap, expected)
    torch.testing.assert_close(feat, expected.amax(dim=(-2, -1)))


@pytest.mark.parametrize("arch", ["poolcnn", "smallcnn"])
def test_reflection_padding_leaves_no_mark_on_the_frame_edge(arch: str) -> None:
    """A frame of one colour: with zero padding the edge locations' features differ from the centre's (the mark a
    self-supervised map can lock onto), with reflection padding every location's feature is the same."""
    frames = torch.full((1, 3, 1, 64, 64), 0.7)
    torch.manual_seed(0)
    zeros = FRAME_NETS.get(arch)(dim=16).eval()
    torch.manual_seed(0)
    reflect = FRAME_NETS.get(arch)(dim=16, padding="reflect").eval()
    reflect.load_state_dict(zeros.state_dict())
    for net, marked in ((zeros, True), (reflect, False)):
        fmap = net(frames)[1][0]
        spread = (fmap - fmap[:, fmap.shape[1] // 2, fmap.shape[2] // 2, None, None]).abs().amax().item()
        assert (spread > 1e-3) == marked, (arch, marked, spread)
    with pytest.raises(ValueError, match="padding must be one of"):
        FRAME_NETS.get(arch)(padding="circular")
    with pytest.raises(ValueError, match="'padding'"):
        build_model("resnet18", "anet", "visual", frame_padding="reflect")


def test_frames_are_encoded_per_time_step_and_averaged() -> None:
    net = FRAME_NETS.get("smallcnn")(img_pool="avg", dim=16).eval()
    frames = torch.rand(B, 3, 3, IMG, IMG)
    feat, fmap = net(frames)
    per_step = [net(frames[:, :, t : t + 1]) for t in range(3)]
    torch.testing.assert_close(feat, torch.stack([f for f, _ in per_step]).mean(0))
    torch.testing.assert_close(fmap, torch.stack([m for _, m in per_step]).mean(0))
    torch.testing.assert_close(per_step[0][0], per_step[0][1].mean(dim=(-2, -1)))


def test_channels_last_input_gives_the_same_output() -> None:
    model = small_model("concat").eval()
    frames, audio = inputs(t=2)
    ref = model(frames, audio).logits
    cl_model = model.to(memory_format=torch.channels_last)
    out = cl_model(frames.contiguous(memory_format=torch.channels_last_3d), audio).logits
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)


def test_eval_mode_is_deterministic() -> None:
    model = small_model("attention").eval()
    frames, audio = inputs()
    first, second = model(frames, audio), model(frames, audio)
    for a, b in zip(first, second, strict=True):
        assert torch.equal(a, b)


def test_unused_modality_input_is_ignored() -> None:
    model = small_model("visual").eval()
    frames, audio = inputs()
    torch.testing.assert_close(model(frames, audio).logits, model(frames, None).logits)
    with pytest.raises(ValueError, match="frames is None"):
        model(None, audio)


@pytest.mark.parametrize(
    ("kwargs", "names"),
    [
        ({"arch_classifier": "nope"}, BUILTIN_HEADS),
        ({"arch_frame": "nope", "arch_classifier": "audio"}, ["resnet18", "smallcnn"]),
        ({"arch_sound": "nope", "arch_classifier": "audio"}, ["anet", "mel", "stft"]),
    ],
)
def test_unknown_names_list_the_registered_ones(kwargs: dict, names: list[str]) -> None:
    with pytest.raises(ValueError, match="nope") as info:
        build_model(**kwargs)
    for name in names:
        assert name in str(info.value)


def test_registry_get_raises_key_error_with_names() -> None:
    registry = Registry("thing")
    registry.register("a")(nn.Identity)
    with pytest.raises(KeyError, match="available: a"):
        registry.get("b")
    with pytest.raises(ValueError, match="already registered"):
        registry.register("a")(nn.Identity)


def test_options_a_part_does_not_take_are_rejected() -> None:
    with pytest.raises(ValueError, match="'dim'"):
        build_model("resnet18", "anet", "visual", frame_dim=64)
    with pytest.raises(ValueError, match="'rank'"):
        small_model("concat", rank=8)
    assert small_model("concat", rank=None).net_classifier.fc.in_features == FRAME_DIM + SOUND_DIM
    assert small_model("bilinear", rank=8).net_classifier.fc.in_features == 8


def test_a_new_head_is_one_class_and_one_decorator() -> None:
    @FUSION_HEADS.register("product_for_test")
    class ProductHead(FusionHead):
        def __init__(self, dim_v: int, dim_a: int, num_classes: int, scale: float = 1.0) -> None:
            super().__init__(dim_v, dim_a, num_classes)
            self.scale = scale
            self.fc = nn.Linear(dim_v, num_classes)

        def forward(self, feat_v, feat_a, fmap_v):
            return self.fc(self.scale * feat_v * feat_a[:, : feat_v.shape[1]])

    try:
        model = small_model("product_for_test", scale=2.0)
        assert isinstance(model.net_classifier, ProductHead) and model.net_classifier.scale == 2.0
        assert model(*inputs()).logits.shape == (B, C)
    finally:
        FUSION_HEADS.unregister("product_for_test")
    assert "product_for_test" not in FUSION_HEADS


def test_imagenet_weights_offline_raise_a_clear_error(monkeypatch, tmp_path) -> None:
    def no_network(url, dst, *args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    with pytest.raises(RuntimeError) as info:
        build_model("resnet18", "anet", "visual", weights_frame="imagenet")
    message = str(info.value)
    assert "Could not download" in message
    assert torchvision.models.ResNet18_Weights.IMAGENET1K_V1.url in message
    assert str(tmp_path) in message
    assert "weights_frame=/path/to/resnet18.pth" in message


def test_imagenet_weights_load_from_the_hub_cache(monkeypatch, tmp_path) -> None:
    reference = torchvision.models.resnet18(weights=None).state_dict()
    url = torchvision.models.ResNet18_Weights.IMAGENET1K_V1.url
    cache = tmp_path / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    torch.save(reference, cache / url.rsplit("/", 1)[-1])
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    net = build_model("resnet18", "anet", "visual", weights_frame="imagenet").net_frame
    torch.testing.assert_close(net.layer4[1].conv2.weight, reference["layer4.1.conv2.weight"])


@pytest.mark.parametrize("wrap", ["bare", "state_dict", "module"])
def test_frame_weights_load_from_a_path(tmp_path, wrap: str) -> None:
    reference = torchvision.models.resnet18(weights=None).state_dict()
    state = {
        "bare": reference,
        "state_dict": {"state_dict": reference, "epoch": 3},
        "module": {f"module.{k}": v for k, v in reference.items()},
    }[wrap]
    path = tmp_path / "resnet18.pth"
    torch.save(state, path)
    net = build_model("resnet18", "anet", "concat", weights_frame=str(path)).net_frame
    loaded = net.state_dict()
    assert set(loaded) == {k for k in reference if not k.startswith("fc.")}
    for key, value in loaded.items():
        assert torch.equal(value, reference[key]), key


def test_attention_map_is_a_distribution_over_locations() -> None:
    model = small_model("attention").eval()
    frames, audio = inputs()
    out = model(frames, audio)
    head = model.net_classifier
    assert head.last_map.shape == (B, IMG // 16, IMG // 16)
    torch.testing.assert_close(head.last_map.sum(dim=(1, 2)), torch.ones(B))
    assert (head.last_map >= 0).all()
    live = head.attention(out.feat_a, out.fmap_v)
    torch.testing.assert_close(live.detach(), head.last_map)
    assert live.requires_grad


def test_anet_matches_the_paper() -> None:
    anet = SOUND_NETS.get("anet")()
    assert anet.out_dim == 512
    convs = [m for m in anet.modules() if isinstance(m, nn.Conv1d)]
    channels = [(c.in_channels, c.out_channels) for c in convs]
    widths = [1, 64, 64, 128, 128, 256, 256, 512, 512]
    assert channels == list(zip(widths[:-1], widths[1:], strict=True))
    assert all(c.kernel_size == (3,) and c.stride == (2,) and c.bias is None for c in convs)
    conv_params = 3 * sum(i * o for i, o in channels)
    bn_params = 2 * 2 * (64 + 128 + 256 + 512)
    assert sum(p.numel() for p in anet.parameters()) == conv_params + bn_params == 1_564_608
    pools = [m for m in anet.modules() if isinstance(m, nn.MaxPool1d)]
    assert len(pools) == 4 and all(p.kernel_size == 2 for p in pools)
    anet.eval()
    wave = torch.rand(B, 1, 65535) * 2 - 1
    with torch.no_grad():
        assert anet.body(wave).shape == (B, 512, 16)
        assert anet(wave).shape == (B, 512)


def test_paper_model_is_resnet18_anet_concat() -> None:
    model = build_model(cls_num=11)
    assert model.net_frame.out_dim == 512 and model.net_sound.out_dim == 512
    assert model.net_classifier.fc.in_features == 1024 and model.net_classifier.fc.out_features == 11
    assert isinstance(model.net_frame, FRAME_NETS.get("resnet18"))
    assert isinstance(model.net_sound, SOUND_NETS.get("anet"))
    with pytest.raises(ValueError, match="needs a visual encoder"):
        AVModel(None, model.net_sound, model.net_classifier)

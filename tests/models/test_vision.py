import torch


def test_pixel_shuffle_layout():
    from stormvl.models.vision import pixel_shuffle

    t = torch.arange(16.0).view(1, 16, 1)  # 4x4 grid, value = row*4+col
    y = pixel_shuffle(t, 4, 2)
    assert y.shape == (1, 4, 4)
    assert y[0, 0].tolist() == [0, 1, 4, 5] and y[0, 3].tolist() == [10, 11, 14, 15]
    odd = pixel_shuffle(torch.ones(1, 9, 1), 3, 2)  # 3x3 padded to 4x4
    assert odd.shape == (1, 4, 4) and odd[0, 3].tolist() == [1, 0, 0, 0]


def test_tanh_gelu_equals_pytorch_tanh_approximation():
    from stormvl.models.vision import TanhGELU

    x = torch.linspace(-12, 12, 20001, dtype=torch.float64).reshape(1, -1)
    ref = torch.nn.functional.gelu(x, approximate="tanh")
    with torch.inference_mode():
        assert torch.allclose(TanhGELU()(x), ref, atol=1e-14, rtol=0)
        x32 = torch.randn(32, 64, 256) * 3
        assert torch.allclose(TanhGELU()(x32), torch.nn.functional.gelu(x32, approximate="tanh"), atol=2e-6, rtol=0)
        assert not torch.equal(TanhGELU()(x), torch.nn.functional.gelu(x))  # not the exact GELU
        for half in (torch.bfloat16, torch.float16):  # PyTorch's kernel rounds once: it stays
            h = x32.to(half)
            assert torch.equal(TanhGELU()(h), torch.nn.functional.gelu(h, approximate="tanh"))
    # With gradients it is PyTorch's own op, so its backward is too.
    g = x.clone().requires_grad_()
    TanhGELU()(g).sum().backward()
    r = x.clone().requires_grad_()
    torch.nn.functional.gelu(r, approximate="tanh").sum().backward()
    assert torch.equal(g.grad, r.grad)


def test_use_fast_gelu_swaps_a_siglip_towers_activations():
    from transformers import SiglipVisionConfig, SiglipVisionModel
    from transformers.activations import ACT2CLS

    from stormvl.models.vision import TanhGELU, use_fast_gelu

    cfg = SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                             image_size=16, patch_size=8)  # fmt: skip
    torch.manual_seed(0)
    tower = SiglipVisionModel(cfg).double().eval()
    px = torch.randn(3, 3, 16, 16, dtype=torch.float64)
    kernel = ACT2CLS["gelu_pytorch_tanh"]  # GELUTanh (PytorchGELUTanh in older transformers)
    slow = sum(type(m) is kernel for m in tower.modules())  # each layer's MLP, the head's
    with torch.inference_mode():
        ref = tower(pixel_values=px).last_hidden_state
        use_fast_gelu(tower)
        out = tower(pixel_values=px).last_hidden_state
    swapped = [m for m in tower.modules() if isinstance(m, TanhGELU)]
    assert len(swapped) == slow == 3
    assert torch.allclose(out, ref, atol=1e-12, rtol=0)
    assert not any(type(m) is kernel for m in tower.modules())

import torch


def test_pixel_shuffle_layout():
    from stormvl.models.vision import pixel_shuffle

    t = torch.arange(16.0).view(1, 16, 1)  # 4x4 grid, value = row*4+col
    y = pixel_shuffle(t, 4, 2)
    assert y.shape == (1, 4, 4)
    assert y[0, 0].tolist() == [0, 1, 4, 5] and y[0, 3].tolist() == [10, 11, 14, 15]
    odd = pixel_shuffle(torch.ones(1, 9, 1), 3, 2)  # 3x3 padded to 4x4
    assert odd.shape == (1, 4, 4) and odd[0, 3].tolist() == [1, 0, 0, 0]

"""PNG grids: one row per class, white padding and empty cells, pixel values rounded from [0, 1]."""

from __future__ import annotations

import numpy as np
import torch

from gendistill.plots import image_grid, loss_plot, save_png


def test_image_grid_rows_are_classes_and_empty_cells_white(tmp_path):
    g = torch.Generator().manual_seed(0)
    images = torch.rand(5, 1, 4, 3, generator=g)
    labels = torch.tensor([0, 0, 2, 0, 2])  # class 1 has no image, class 0 three
    a = np.array(image_grid(images, labels, 3, pad=2, scale=1))
    assert a.shape == (3 * (4 + 2) + 2, 3 * (3 + 2) + 2, 3)
    cell = lambda i, j: a[2 + i * 6 : 2 + i * 6 + 4, 2 + j * 5 : 2 + j * 5 + 3]  # noqa: E731
    expect = (images[3, 0] * 255).round().to(torch.uint8).numpy()
    assert (cell(0, 2)[..., 0] == expect).all() and (cell(0, 2)[..., 1] == expect).all()  # grey repeated to RGB
    assert (cell(1, 0) == 255).all() and (cell(2, 2) == 255).all()  # no image there: white
    assert (a[:2] == 255).all() and (a[:, :2] == 255).all()  # padding
    assert np.array(image_grid(images, labels, 3, per_class=1, scale=2)).shape == (2 * (3 * 6 + 2), 2 * (1 * 5 + 2), 3)
    save_png(loss_plot([3.0, 2.0, 1.0]), tmp_path / "l.png")
    assert (tmp_path / "l.png").stat().st_size > 0

"""Grad-CAM on the layer the forward pass captured."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from saliency.errors import OptionError
from saliency.passes import ForwardPass


def gradcam(run: ForwardPass) -> Tensor:
    """Selvaraju et al. (2017): ``L = ReLU(Σ_k α_k A^k)``, ``α_k = mean_ij ∂y/∂A^k_ij``.

    ``A`` is the captured layer's output; the map is upsampled bilinearly to the input's size and
    returned as ``[B, 1, H, W]`` (computed once per forward pass, shared with guided Grad-CAM).
    """
    if "gradcam" not in run.cache:
        captured = run.cam_layer.activation
        if captured is not None and not (isinstance(captured, Tensor) and captured.dim() == 4):
            shape = list(captured.shape) if isinstance(captured, Tensor) else type(captured).__name__
            raise OptionError(f"Grad-CAM needs a layer that returns a [batch, channels, height, width] feature map; "
                              f"the layer chosen returns {shape}: name a convolutional layer with the 'layer' option")
        a, grad = run.layer_gradient()
        alpha = grad.mean(dim=(2, 3), keepdim=True)
        cam = (alpha * a).sum(dim=1, keepdim=True).clamp(min=0)
        run.cache["gradcam"] = F.interpolate(cam, size=run.leaf.shape[2:], mode="bilinear", align_corners=False)
    return run.cache["gradcam"]

"""Proxy and evaluation networks behind a registry.

``registry`` holds the registry, :class:`NetConfig` and the builders by name (``get_net``, ``fresh_net``,
``init_weights``); ``layers`` the shared pieces (norms, activations, pools, :class:`FeatureNet`); ``convnet`` the
field's ConvNet (``convnet``, ``convnet-bn``); ``zoo`` the cross-architecture nets (``alexnet``, ``vgg11``,
``resnet18``, ``resnet18bn``, ``mlp``); ``vit`` a small ViT built with transformers (``vit``); ``external`` the
``tv:NAME`` (torchvision) and ``timm:NAME`` escape hatches. Importing this package registers them all.
"""

from __future__ import annotations

from . import convnet, external, vit, zoo  # noqa: F401  (register every net)
from .convnet import ConvNet
from .layers import FeatureNet
from .registry import EXTERNAL, NETS, NetConfig, fresh_net, get_builder, get_net, init_weights, list_nets
from .zoo import MLP

__all__ = ["NETS", "EXTERNAL", "NetConfig", "FeatureNet", "ConvNet", "MLP", "get_net", "get_builder", "fresh_net",
           "init_weights", "list_nets"]

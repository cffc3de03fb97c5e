"""gendistill: generative / latent dataset distillation.

    import gendistill, torch
    ds = gendistill.load_set("set.safetensors")          # or a run directory, or a Hub dataset repo "owner/name"
    loader = torch.utils.data.DataLoader(ds, batch_size=256, shuffle=True)

``gendistill.distill_set(method="dm", ...)`` makes a set from a notebook (the `gendistill distill` pipeline). The
names are imported on first use, so ``import gendistill`` stays light.
"""

__version__ = "0.1.0"

_LAZY = {"load_set": "api", "distill_set": "api", "DistilledSet": "api"}
__all__ = ["__version__", *_LAZY]


def __getattr__(name):
    if name in _LAZY:
        from importlib import import_module

        value = getattr(import_module(f"{__name__}.{_LAZY[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_LAZY))

"""Import torchvision on a CPU-only torch.

PyPI's torchvision wheels are CUDA builds: their compiled ops (``torchvision/_C.so``) link ``libtorch_cuda``,
which the 0.2 GB CPU build of torch that CI and laptops install (``constraints/cpu.txt``) does not ship.
torchvision itself survives a missing ``_C`` — except its fake-tensor registrations for those ops, which
raise at import time and take ``import torchvision`` (and with it segmentation-models-pytorch) down.

We use none of those ops (nms, roi_align, deform_conv2d...): only the ResNet building blocks, which are pure
Python. So when, and only when, that import error happens, import torchvision again without the
registrations. On a matching torch/torchvision pair this module does nothing.
"""

from __future__ import annotations

import sys
import types


def import_torchvision():
    try:
        import torchvision
    except RuntimeError as err:
        if "torchvision::" not in str(err):
            raise
        for name in [n for n in sys.modules if n == "torchvision" or n.startswith("torchvision.")]:
            del sys.modules[name]
        sys.modules["torchvision._meta_registrations"] = types.ModuleType("torchvision._meta_registrations")
        import torchvision
    return torchvision


import_torchvision()

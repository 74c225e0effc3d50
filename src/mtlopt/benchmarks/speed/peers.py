"""The peer libraries of the speed suite (TorchJD, LibMTL): importing them and their training steps."""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import sys
import types
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ..interfaces import MultiTaskModel
from .setups import Setup, Step

PEERS: dict[str, str] = {
    "torchjd": "torchjd",
    "libmtl": "LibMTL",
}
_TORCHVISION_STUBS = ("torchvision", "torchvision.models", "torchvision.models.utils")


def import_peer(peer: str) -> types.ModuleType | None:
    """Import a peer library, or return None when it is not installed (or does not import).

    LibMTL 1.1.5 imports ``torchvision.models.utils`` at import time (for a pretrained ResNet it never
    downloads here), and torchvision does not import beside this project's torch: a stub of the three
    torchvision modules stands in during ``import LibMTL`` only and is removed right after, so later
    imports see no fake torchvision.
    """
    module_name = PEERS[peer]
    if module_name in sys.modules:
        return sys.modules[module_name]
    if importlib.util.find_spec(module_name) is None:
        return None
    if peer != "libmtl":
        try:
            return importlib.import_module(module_name)
        except Exception:
            return None
    added = [name for name in _TORCHVISION_STUBS if name not in sys.modules]
    for name in added:
        sys.modules[name] = types.ModuleType(name)

    def no_download(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("torchvision is stubbed out: LibMTL's pretrained weights are not available")

    if "torchvision.models.utils" in added:
        sys.modules["torchvision.models.utils"].load_state_dict_from_url = no_download  # type: ignore[attr-defined]
    try:
        module = importlib.import_module(module_name)
        importlib.import_module(f"{module_name}.weighting")
        importlib.import_module(f"{module_name}.architecture")
        return module
    except Exception:
        return None
    finally:
        for name in added:
            sys.modules.pop(name, None)


def peer_version(peer: str) -> str:
    try:
        return importlib.metadata.version(PEERS[peer])
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def torchjd_step(aggregator_name: str) -> Callable[[Setup], Step]:
    def build(s: Setup) -> Step:
        import_peer("torchjd")
        from torchjd import aggregation
        from torchjd.autojac import jac_to_grad, mtl_backward

        aggregator = getattr(aggregation, aggregator_name)()
        model = s.model()
        optimizer = s.optimizer(model.parameters())

        def run() -> None:
            optimizer.zero_grad(set_to_none=True)
            z, losses = s.forward(model)
            mtl_backward(losses, features=z)
            jac_to_grad(model.encoder.parameters(), aggregator)
            optimizer.step()

        return Step(run, [optimizer], [model], [s.x, s.y])

    return build


def representation_jacobian(losses: Sequence[Tensor], z: Tensor) -> Tensor:
    """The K × (batch·features) Jacobian of the losses w.r.t. the representation ``z`` (flattened)."""
    rows = [torch.autograd.grad(loss, z, retain_graph=True)[0].reshape(-1) for loss in losses]
    return torch.stack(rows)


def torchjd_features_backward(model: Any, losses: Sequence[Tensor], z: Tensor, weighting: Any) -> Tensor:
    """A TorchJD weighting on the Gramian of the flattened representation gradients (an ``-UB`` method
    composed from TorchJD's parts): the heads get ∇L_t unweighted (as ``mtl_backward``), the encoder
    the weighted representation gradient. Returns the weights."""
    Jz = representation_jacobian(losses, z)
    weights = weighting(Jz @ Jz.T)
    heads = [p for p in model.heads.parameters() if p.requires_grad]
    for p, g in zip(heads, torch.autograd.grad(torch.stack(list(losses)).sum(), heads, retain_graph=True)):
        p.grad = g if p.grad is None else p.grad + g
    z.backward((weights.to(Jz.dtype) @ Jz).view_as(z))
    return weights


def torchjd_features_step(weighting_name: str) -> Callable[[Setup], Step]:
    """TorchJD's ``weighting_name`` (a ``Weighting`` of the Gramian) on the representation's Gramian."""

    def build(s: Setup) -> Step:
        import_peer("torchjd")
        from torchjd import aggregation

        weighting = getattr(aggregation, weighting_name)()
        model = s.model()
        optimizer = s.optimizer(model.parameters())

        def run() -> None:
            optimizer.zero_grad(set_to_none=True)
            z, losses = s.forward(model)
            torchjd_features_backward(model, losses, z, weighting)
            optimizer.step()

        return Step(run, [optimizer], [model], [s.x, s.y])

    return build


def libmtl_model(s: Setup, weighting_name: str, rep_grad: bool, base: MultiTaskModel | None = None) -> Any:
    """LibMTL's hard-parameter-sharing model (``HPS`` + a weighting), outside LibMTL's trainer (an
    ``nn.Module`` of LibMTL's untyped classes, hence ``Any``: its ``backward`` and ``encoder`` are LibMTL's).

    LibMTL's ``Trainer`` hard-codes ``cuda:0``, so the model class is built the way the trainer builds
    it, from this configuration's encoder and heads. One compatibility shim: LibMTL 1.1.5 zeroes the
    shared gradients between tasks with ``encoder.zero_grad()``, which since torch 2.0 sets them to
    ``None`` and then breaks its own ``_reset_grad``; the shim zeroes them in place (the behaviour of the
    torch versions LibMTL was written for).
    """
    libmtl = import_peer("libmtl")
    if libmtl is None:
        raise RuntimeError("LibMTL is not importable")
    from LibMTL.architecture import HPS

    weighting = getattr(libmtl.weighting, weighting_name)
    source = base if base is not None else s.model()
    names = [f"task{t}" for t in range(s.tasks)]
    encoder = source.encoder
    decoders = nn.ModuleDict(dict(zip(names, source.heads)))

    class Model(HPS, weighting):  # type: ignore[misc, valid-type]
        def __init__(self) -> None:
            super().__init__(names, lambda: encoder, decoders, rep_grad, False, s.device)
            self.init_param()

        def zero_grad_share_params(self) -> None:
            self.encoder.zero_grad(set_to_none=False)

    model = Model().to(s.device)
    model.task_names = names
    if weighting_name == "GradNorm":  # past LibMTL's first (equal-weight) epoch, L(0) known
        model.epoch = 1
        model.train_loss_buffer = np.ones((s.tasks, 1))
    return model


_LIBMTL_KWARGS: dict[str, dict[str, Any]] = {
    "MGDA": {"mgda_gn": "none"},
    "GradNorm": {"alpha": 1.5},
    "GradVac": {"beta": 0.5},
}


def libmtl_losses(s: Setup, model: Any) -> Tensor:
    out = model(s.x)
    return torch.stack(s.spec.losses([out[name] for name in model.task_names], s.y))


def libmtl_step(weighting_name: str, rep_grad: bool = False) -> Callable[[Setup], Step]:
    def build(s: Setup) -> Step:
        model = libmtl_model(s, weighting_name, rep_grad)
        optimizer = s.optimizer(model.parameters())
        kwargs = _LIBMTL_KWARGS.get(weighting_name, {})

        def run() -> None:
            optimizer.zero_grad(set_to_none=True)
            model.backward(libmtl_losses(s, model), **kwargs)
            optimizer.step()

        return Step(run, [optimizer], [model], [s.x, s.y])

    return build


def torchjd_scalarizer(name: str, tasks: int) -> Any:
    """A TorchJD scalarizer with the settings of the mtlopt row it is compared with (the papers'
    defaults; STCH: TorchJD's only form, the raw losses, μ = 1 and λ = 1/K)."""
    import_peer("torchjd")
    from torchjd import scalarization

    cls = getattr(scalarization, name)
    if name in ("IMTLL", "FAMO"):
        return cls(tasks) if name == "IMTLL" else cls(tasks, lr=0.025, weight_decay=1e-3)
    if name == "STCH":
        return cls(1.0)
    return cls()


def torchjd_scalarizer_step(name: str) -> Callable[[Setup], Step]:
    """One step with a TorchJD scalarizer: ``scalarizer(stack(losses)).backward()``, with its loop hooks
    where it has them (DWA: ``step()`` after every step, a one-step epoch as mtlopt's row; FAMO:
    ``update`` with the losses recomputed on the same batch after the optimizer step)."""

    def build(s: Setup) -> Step:
        scalarizer = torchjd_scalarizer(name, s.tasks)
        model = s.model()
        optimizer = s.optimizer([*model.parameters(), *scalarizer.parameters()])  # IMTL-L's scales

        def run() -> None:
            optimizer.zero_grad(set_to_none=True)
            _, losses = s.forward(model)
            scalarizer(torch.stack(losses)).backward()
            optimizer.step()
            if name == "DWA":
                scalarizer.step()
            elif name == "FAMO":
                with torch.no_grad():
                    scalarizer.update(torch.stack(s.forward(model)[1]))

        if name == "DWA":  # past the two uniform epochs, as mtlopt's row
            for _ in range(2):
                run()
        return Step(run, [optimizer], [model, scalarizer], [s.x, s.y])

    return build


def libmtl_loss_model(s: Setup, weighting_name: str, base: MultiTaskModel | None = None) -> Any:
    """LibMTL's HPS with a loss weighting; DWA past its two uniform epochs, its epoch-mean buffer
    filled (LibMTL's trainer fills ``train_loss_buffer`` at every epoch end)."""
    model = libmtl_model(s, weighting_name, False, base)
    if weighting_name == "DWA":
        model.epoch = 2
        model.train_loss_buffer = np.stack([dwa_history(s.tasks)[i].numpy() for i in (0, 1)], axis=1)
    return model


def dwa_history(tasks: int) -> Tensor:
    """Two epoch means (oldest first) that every DWA of the suite starts from: distinct ratios, values
    exact in float32."""
    first = 1.0 + torch.arange(tasks, dtype=torch.float64) / 8
    second = first * (1.0 - torch.arange(tasks, dtype=torch.float64) % 4 / 16)
    return torch.stack([first, second])


_LIBMTL_LOSS_KWARGS: dict[str, dict[str, Any]] = {"DWA": {"T": 2.0}, "RLW": {"dist": "Normal"}, "GLS": {}}


def libmtl_loss_step(weighting_name: str) -> Callable[[Setup], Step]:
    def build(s: Setup) -> Step:
        model = libmtl_loss_model(s, weighting_name)
        optimizer = s.optimizer(model.parameters())
        kwargs = _LIBMTL_LOSS_KWARGS[weighting_name]

        def run() -> None:
            optimizer.zero_grad(set_to_none=True)
            model.backward(libmtl_losses(s, model), **kwargs)
            optimizer.step()

        return Step(run, [optimizer], [model], [s.x, s.y])

    return build

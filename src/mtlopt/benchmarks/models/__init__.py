"""Benchmark models: a shared encoder and one head per task (hard parameter sharing).

- :mod:`.lenet`: the MultiMNIST LeNets (:class:`SenerLeNet`, :class:`PMTLLeNet`);
- :mod:`.vision`: CelebA's ResNet-18 and VGG-like CNN, the SegNet / MTAN models of NYUv2 and Cityscapes
  and their losses;
- :mod:`.graph`: QM9's message-passing network (needs ``torch_geometric``);
- :mod:`.mlp`: the speed suite's QM9-sized MLP.

Every model is a :class:`~mtlopt.benchmarks.interfaces.MultiTaskModel`.
"""

from ..interfaces import MultiTaskModel
from .lenet import PMTLLeNet, SenerLeNet, cross_entropy_losses
from .mlp import QM9MLP

__all__ = ["QM9MLP", "MultiTaskModel", "PMTLLeNet", "SenerLeNet", "cross_entropy_losses"]

"""Set learners: one model conditioned on a preference ray, trained for the whole Pareto front.

- :mod:`.hypernetwork`: Pareto hypernetworks (PHN-LS, PHN-EPO; Navon et al., ICLR 2021).
- :mod:`.cosmos`: COSMOS (Ruchte & Grabocka, ICDM 2021).
- :mod:`.pamal`: PaMaL, a weight ensemble of one member per task (Dimitriadis et al., ICML 2023).
- :mod:`._rays`: the Dirichlet ray sampler and the fixed test rays shared by all three.

A package rather than one module per method at the top level: the learners share the ray sampling, the
test rays and the front evaluation, and their training objects (``PHN``, ``COSMOS``) have one interface
(``sample_ray``, ``backward(losses, ray)``, ``state_dict``) for your loop; ``PaMaL`` draws a window of
rays per step (``sample_rays``, ``backward(losses, rays)``).
"""

from ._rays import RaySampler, evaluate_front, test_rays
from .cosmos import COSMOS, PreferenceInput
from .hypernetwork import PHN, ParetoHypernetwork, SetStepResult
from .pamal import PaMaL, WeightEnsemble, recalibrate_batchnorm

__all__ = [
    "COSMOS",
    "PHN",
    "PaMaL",
    "ParetoHypernetwork",
    "PreferenceInput",
    "RaySampler",
    "SetStepResult",
    "WeightEnsemble",
    "evaluate_front",
    "recalibrate_batchnorm",
    "test_rays",
]

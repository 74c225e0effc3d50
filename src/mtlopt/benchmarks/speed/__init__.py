r"""The speed suite behind ``mtlopt speed``: the price of every method relative to equal weighting.

For each configuration (a model, a number of tasks K, a batch size) every method trains the same model
(identical initial weights, copied from one template) on the same fixed synthetic batch, with the same
base optimizer (Adam, lr 1e-3, unless a method replaces it: MAO is its own optimizer). What is measured:

Time per training step
    One step is what a training loop does per batch: ``zero_grad``, the forward pass, the method's
    backward (weights, per-task gradients, solvers, ...) and the optimizer step. Every method first takes
    ``warmup`` untimed steps. Then come ``rounds`` *interleaved* rounds: in each round every method takes
    ``steps`` timed steps in turn (the order rotates and reverses from round to round) and the round's
    median is kept. The ratio to EW is taken **per round** (EW's median of the same round), and the
    table reports the median of those ratios and their interquartile range, so a change of machine load
    during the run affects both sides of each ratio alike. The thread count is set with
    ``torch.set_num_threads`` and recorded; on CUDA every step is bracketed by
    ``torch.cuda.synchronize()``. ``budget`` caps the seconds spent timing one configuration: slow
    configurations get fewer rounds (at least ``min_rounds``) and one timed step per round.

Peak memory
    On CUDA: ``torch.cuda.max_memory_allocated()`` over one step, after ``reset_peak_memory_stats()``.
    On the CPU there is no allocator statistic, so the suite uses the PyTorch profiler's memory
    accounting (``profile_memory=True``), which records every allocation and free of tensor memory made
    through PyTorch's CPU allocator: the peak is the memory held at the start of the step (the
    parameters, optimizer state, buffers and the batch; gradients are set to ``None`` first) plus the
    high-water mark of the allocations minus frees recorded during one step. Memory that a peer keeps
    from the previous step outside those tensors (LibMTL keeps the last representation) is not counted
    at the start; its release during the step is not recorded either, so it is not subtracted.
    Allocations outside PyTorch (NumPy in the solvers: K×K) are not seen; they are negligible.

Agreement with the peers (``torchjd``, ``libmtl``)
    Before timing, in the same run, each peer method and the mtlopt method implementing the same
    algorithm take one step's backward from identical parameters on the identical batch, and the suite
    reports the largest difference of their task weights, the relative difference of the resulting
    update of the shared parameters, and, for MGDA, how far the peer's weights are above the optimal
    min-norm objective (their solvers are iterative and stop early; mtlopt's is exact). PCGrad draws
    random task orders; the suite replays the peer's own draws through :meth:`mtlopt.PCGrad.coefficients`,
    so equal orders give equal weights. The loss-level methods (DWA, RLW, GLS, IMTL-L, FAMO, STCH) are
    compared with TorchJD's scalarizers and LibMTL's weightings from identical states (DWA's two epoch
    means, IMTL-L's scales, RLW's seed in the peer's global generator, FAMO after one logit update from
    the same recomputed losses): the weights applied to the losses and the update of every model
    parameter.
    The Gramian methods (IMTL-G, IMTL, Aligned-MTL(-UB), ConFIG, GradVac) share one generic check: the
    peer row's step and the mtlopt runner under the options that reproduce the peer (the catalog line's
    ``agree``), the weights (least squares on J where the peer returns none) and the shared update; the
    peers' random orders are replayed from the runner's seed.

Loop hooks
    A step includes what the training loop adds for the method: DWA and STCH run as one-step epochs (the
    runner's ``on_epoch_start`` before every step), FAMO recomputes the losses on the same batch after
    the optimizer step and updates its logits; ``famo-no-update`` is FAMO's step without that hook.

Min-norm solver table
    Gramians of real per-task gradients (a LeNet with K heads on scikit-learn's digits, relabeled per
    task, at several points of a short training run), each solved by mtlopt's default solver and the
    peers' MGDA solvers; time per call and the excess of the objective over the optimum. mtlopt's
    optimality is certified by its Frank–Wolfe duality gap: :math:`f - f^* \le 2\,\mathrm{gap}`.

Models: ``lenet`` (Sener & Koltun's MultiMNIST LeNet, 28×28, 10-class heads), ``resnet18`` (their
CelebA ResNet-18 on synthetic 64×64 images, two-class heads), ``mlp`` (an MLP on a QM9-sized input: the
upper triangle of a 29-atom Coulomb matrix, 435 values; one regression head per task, MSE).

Layout: :mod:`.setups` (models, batches, :class:`Setup`, :class:`Step`), :mod:`.steps` (mtlopt's methods,
built by the benchmark method registry :mod:`mtlopt.benchmarks.methods`), :mod:`.peers` (TorchJD and
LibMTL), :mod:`.catalog` (the table's rows), :mod:`.agreement`, :mod:`.timing`, :mod:`.solvers`,
:mod:`.measure` (:func:`run_speed`), :mod:`.results` and :mod:`.report` (Markdown, CSV, JSON, plot).
The acceptance targets of the issues are not part of the package: ``tools/speed_targets.py`` judges them
from ``speed.json`` and adds them to ``speed.md``.
"""

from ..models import QM9MLP
from .agreement import Agreement, agreement
from .catalog import DEFAULT_METHODS, METHODS, REFERENCE_METHODS, Method
from .measure import measure_config, run_speed
from .peers import PEERS, import_peer, peer_version
from .report import markdown, plot_overhead, write_csv, write_report
from .results import (
    ConfigResult,
    MethodResult,
    SolverRow,
    SpeedConfig,
    SpeedReport,
    load_report,
    report_json,
)
from .setups import MODELS, ModelSpec, Setup, Step, make_setup
from .solvers import real_gramians, solver_table
from .timing import StepTimeout, time_limit

__all__ = [
    "DEFAULT_METHODS",
    "METHODS",
    "MODELS",
    "PEERS",
    "QM9MLP",
    "REFERENCE_METHODS",
    "Agreement",
    "ConfigResult",
    "Method",
    "MethodResult",
    "ModelSpec",
    "Setup",
    "SolverRow",
    "SpeedConfig",
    "SpeedReport",
    "Step",
    "StepTimeout",
    "agreement",
    "import_peer",
    "load_report",
    "make_setup",
    "markdown",
    "measure_config",
    "peer_version",
    "plot_overhead",
    "real_gramians",
    "report_json",
    "run_speed",
    "solver_table",
    "time_limit",
    "write_csv",
    "write_report",
]

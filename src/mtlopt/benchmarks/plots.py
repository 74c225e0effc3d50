"""The figures of a comparison report: learning curves, the task pair, per-layer balance, hypervolume and
the front (matplotlib, Agg backend, imported on first use)."""

from __future__ import annotations

import statistics
from pathlib import Path

from .records import hv_objective, hv_reference, hypervolume_curve, members_of, sample_std


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _palette(plt, n: int) -> list:
    """Distinct colours for n lines: matplotlib's cycle (tab10), tab20 beyond ten."""
    return list(plt.get_cmap("tab20").colors) if n > 10 else plt.rcParams["axes.prop_cycle"].by_key()["color"]


def _marker(epochs: list[int]) -> dict[str, object]:
    """Markers on the points of short curves, so that a single epoch is a dot rather than nothing."""
    return {"marker": "o", "markersize": 4 if len(epochs) > 1 else 6} if len(epochs) <= 12 else {}


def plot_learning_curves(directory: Path, order, by_label, tasks, metrics) -> None:
    """One panel per (task, metric): the test value per epoch, mean ± std over seeds."""
    plt = pyplot()
    from matplotlib.ticker import MaxNLocator

    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    names = list(dict.fromkeys(metric for _, metric, _ in metrics))
    grid = len(tasks) <= 4 and len(metrics) == len(tasks) * len(names)  # every task has every metric
    if grid:  # metrics as rows, tasks as columns
        rows, columns = len(names), len(tasks)
        place = {(task, metric): (names.index(metric), tasks.index(task)) for task, metric, _ in metrics}
    else:  # one panel per (task, metric), four per row
        columns = min(4, len(metrics))
        rows = -(-len(metrics) // columns)
        place = {(task, metric): divmod(k, columns) for k, (task, metric, _) in enumerate(metrics)}
    fig, axes = plt.subplots(rows, columns, figsize=(4.6 * columns, 3.6 * rows), squeeze=False)
    panels = {key: axes[row][column] for key, (row, column) in place.items()}
    for i, label in enumerate(order):
        runs = by_label[label]
        epochs = [record["epoch"] for record in runs[0]["history"]]
        color, style = colors[i % len(colors)], ("-", "--", ":", "-.")[(i // len(colors)) % 4]
        for (task, metric), ax in panels.items():
            curves = [[record["test"][task][metric] for record in run["history"]] for run in runs]
            mean = [statistics.fmean(v) for v in zip(*curves)]
            spread = [sample_std(list(v)) for v in zip(*curves)]
            ax.plot(epochs, mean, label=label, color=color, linestyle=style, **_marker(epochs))
            ax.fill_between(
                epochs,
                [m - s for m, s in zip(mean, spread)],
                [m + s for m, s in zip(mean, spread)],
                color=color,
                alpha=0.15,
            )
    for (task, metric), ax in panels.items():
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(f"test {metric.replace('_', '-')}" + (" (%)" if metric == "accuracy" else ""))
        ax.set_title(f"task {task}")
        ax.grid(alpha=0.3)
    used = set(map(id, panels.values()))
    for ax in axes.flat:
        if id(ax) not in used:
            ax.set_visible(False)
    next(iter(panels.values())).legend(fontsize=8)
    fig.suptitle(f"{by_label[order[0]][0]['benchmark']}: mean ± std over seeds")
    fig.tight_layout()
    fig.savefig(directory / "learning_curves.png", dpi=110)
    plt.close(fig)


def plot_task_pair(directory: Path, order, by_label, tasks, metrics) -> None:
    plt = pyplot()
    colors = _palette(plt, len(order))
    first = {task: next(metric for t, metric, _ in metrics if t == task) for task in tasks}
    fig, ax = plt.subplots(figsize=(5.5, 5.0))
    for i, label in enumerate(order):
        runs = by_label[label]
        xs = [run["final"]["test"][tasks[0]][first[tasks[0]]] for run in runs]
        ys = [run["final"]["test"][tasks[1]][first[tasks[1]]] for run in runs]
        color = colors[i % len(colors)]
        ax.scatter(xs, ys, color=color, alpha=0.4, s=18)
        ax.scatter(
            [statistics.fmean(xs)],
            [statistics.fmean(ys)],
            color=color,
            marker="*",
            s=160,
            edgecolor="black",
            label=label,
        )
    for set_label, task in ((ax.set_xlabel, tasks[0]), (ax.set_ylabel, tasks[1])):
        unit = " (%)" if first[task] == "accuracy" else ""
        set_label(f"task {task}: test {first[task].replace('_', '-')}{unit}")
    ax.set_title("last epoch; small dots: seeds, stars: mean")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(directory / "task_pair.png", dpi=110)
    plt.close(fig)


def plot_balance(directory: Path, order, by_label, tasks) -> None:
    """For methods that log it (MAO): each task's share of the squared update, per layer, per epoch."""
    for label in order:
        runs = [
            run
            for run in by_label[label]
            if run.get("balance_layers") and "balance" in run["history"][0]["train"]
        ]
        if not runs:
            continue
        plt = pyplot()
        from matplotlib.ticker import MaxNLocator

        colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
        layers = runs[0]["balance_layers"]
        epochs = [record["epoch"] for record in runs[0]["history"]]
        fig, axes = plt.subplots(1, len(layers), figsize=(3.6 * len(layers), 3.6), squeeze=False, sharey=True)
        for j, layer in enumerate(layers):
            ax = axes[0][j]
            for t, task in enumerate(tasks):
                index = j * len(tasks) + t
                curves = [[record["train"]["balance"][index] for record in run["history"]] for run in runs]
                ax.plot(
                    epochs,
                    [statistics.fmean(v) for v in zip(*curves)],
                    color=colors[t % len(colors)],
                    label=f"task {task}",
                    **_marker(epochs),
                )
            ax.axhline(1.0 / len(tasks), color="gray", linewidth=0.8, linestyle=":")
            ax.set_title(layer, fontsize=9)
            ax.set_xlabel("epoch")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.set_ylim(0.0, 1.0)
            ax.grid(alpha=0.3)
        axes[0][0].set_ylabel("share of the squared update")
        axes[0][0].legend(fontsize=8)
        fig.suptitle(f"{label}: per-layer balance across tasks (EMA, mean over seeds)")
        fig.tight_layout()
        fig.savefig(directory / f"balance_{file_label(label)}.png", dpi=110)
        plt.close(fig)


def file_label(label: str) -> str:
    return "".join(c if c.isalnum() or c in "-+." else "_" for c in label).strip("_")


def plot_hypervolume(directory: Path, order, by_label) -> None:
    """Test hypervolume per epoch, mean ± std over seeds, one line per method."""
    plt = pyplot()
    from matplotlib.ticker import MaxNLocator

    colors = _palette(plt, len(order))
    outside = len(order) > 6  # many methods: the legend beside the axes, not over the curves
    fig, ax = plt.subplots(figsize=(8.6 if outside else 6.0, 4.2))
    reference: list[float] | None = None
    highest = 0.0
    for i, label in enumerate(order):
        runs = by_label[label]
        reference = hv_reference(runs[0])
        if reference is None:  # the callers plot only runs with a reference point
            raise ValueError(f"{label}: no hypervolume reference point")
        curves = [hypervolume_curve(run, "test", reference) for run in runs]
        epochs = [record["epoch"] for record in runs[0]["history"]]
        mean = [statistics.fmean(v) for v in zip(*curves)]
        spread = [sample_std(list(v)) for v in zip(*curves)]
        color = colors[i % len(colors)]
        ax.plot(
            epochs,
            mean,
            color=color,
            label=f"{label} ({len(members_of(runs[0]['history'][0], 'test'))} pts)",
            **_marker(epochs),
        )
        highest = max([highest, *(m + s for m, s in zip(mean, spread))])
        ax.fill_between(
            epochs,
            [m - s for m, s in zip(mean, spread)],
            [m + s for m, s in zip(mean, spread)],
            color=color,
            alpha=0.15,
        )
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel(f"test hypervolume (reference {tuple(reference or ())})")
    # A volume is >= 0: the axis starts there (all-zero curves, e.g. after one epoch, get a unit axis)
    ax.set_ylim(0.0, 1.05 * highest if highest > 0 else 1.0)
    ax.grid(alpha=0.3)
    if outside:
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0)
    else:
        ax.legend(fontsize=8)
    ax.set_title("hypervolume of each method's models, mean ± std over seeds")
    fig.tight_layout()
    fig.savefig(directory / "hypervolume.png", dpi=110)
    plt.close(fig)


def plot_front(directory: Path, order, by_label, tasks) -> None:
    """Each method's models at the last epoch in objective space, for every metric (two tasks)."""
    if len(tasks) != 2:
        return
    plt = pyplot()
    colors = _palette(plt, len(order))
    markers = {"stl": "*", "ew": "P"}
    metrics = list(by_label[order[0]][0]["metrics"].items())
    fig, axes = plt.subplots(1, len(metrics), figsize=(5.5 * len(metrics), 4.8), squeeze=False)
    for i, label in enumerate(order):
        runs = by_label[label]
        color = colors[i % len(colors)]
        for ax, (metric, _) in zip(axes[0], metrics):
            per_seed = [members_of(run["history"][-1], "test") for run in runs]
            for members in per_seed:
                ax.scatter(
                    [m[tasks[0]][metric] for m in members],
                    [m[tasks[1]][metric] for m in members],
                    color=color,
                    alpha=0.3,
                    s=14,
                )
            mean_x = [
                statistics.fmean(v)
                for v in zip(*[[m[tasks[0]][metric] for m in members] for members in per_seed])
            ]
            mean_y = [
                statistics.fmean(v)
                for v in zip(*[[m[tasks[1]][metric] for m in members] for members in per_seed])
            ]
            marker = markers.get(runs[0]["method"], "o")
            size = 160 if marker != "o" else 40
            ax.plot(
                mean_x,
                mean_y,
                color=color,
                marker=marker,
                markersize=size**0.5,
                markeredgecolor="black",
                linewidth=1,
                label=label,
            )
    reference, objective = hv_reference(by_label[order[0]][0]), hv_objective(by_label[order[0]][0])
    for ax, (metric, _) in zip(axes[0], metrics):
        if reference is not None and metric == objective:
            _draw_reference_box(ax, reference)
    for ax, (metric, direction) in zip(axes[0], metrics):
        arrow = "↑" if direction == "higher" else "↓"
        unit = " (%)" if metric == "accuracy" else ""
        ax.set_xlabel(f"task {tasks[0]}: test {metric.replace('_', '-')}{unit} {arrow}")
        ax.set_ylabel(f"task {tasks[1]}: test {metric.replace('_', '-')}{unit} {arrow}")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.suptitle(
        "models at the last epoch\n(faint: seeds; line: mean over seeds, members in preference order)",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(directory / "front.png", dpi=110)
    plt.close(fig)


def _draw_reference_box(ax, reference: list[float]) -> None:
    """The hypervolume's box: the region dominating the reference point, dashed, the point in view; a
    model outside it (or dominated inside it) adds no volume."""
    ax.update_datalim([reference])
    ax.autoscale_view()
    xlim, ylim = ax.get_xlim(), ax.get_ylim()
    rx, ry = reference
    ax.plot([xlim[0], rx, rx], [ry, ry, ylim[0]], color="gray", linestyle="--", linewidth=1)
    ax.set_xlim(xlim)
    ax.set_ylim(ylim)
    ax.annotate("HV reference", (rx, ry), textcoords="offset points", xytext=(-4, 4), ha="right", fontsize=7)

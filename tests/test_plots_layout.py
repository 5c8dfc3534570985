"""feratt_jax.plots.curves_png: the legend sits below the x label, covering neither the curves nor the label."""

from matplotlib.figure import Figure

from feratt_jax import plots


def test_curve_legend_is_below_the_x_label(tmp_path, monkeypatch):
    seen = {}
    save = Figure.savefig

    def measuring_savefig(fig, *args, **kwargs):
        fig.canvas.draw()
        (ax,) = fig.axes
        seen["label"] = ax.xaxis.label.get_window_extent()
        seen["ticks"] = ax.xaxis.get_tightbbox()
        seen["legend"] = ax.get_legend().get_window_extent()
        seen["axes"] = ax.get_window_extent()
        return save(fig, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", measuring_savefig)
    long_names = {f"a run label long enough to span the axes, number {i}": [10.0 * i, 20.0 * i] for i in range(5)}
    plots.curves_png(tmp_path / "c.png", [16, 32], long_names, "training images seen (thousands)", "accuracy (%)", band=(65, 85, "target"))
    # Display coordinates: y grows upwards. The legend's top is under the x label's bottom, which
    # is under the tick labels and the axes (the fixed offset used before overlapped the label).
    assert seen["legend"].y1 <= seen["label"].y0
    assert seen["label"].y1 <= seen["ticks"].y1 <= seen["axes"].y1
    assert (tmp_path / "c.png").stat().st_size > 1000

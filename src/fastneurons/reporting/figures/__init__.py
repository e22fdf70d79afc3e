"""Matplotlib figures of the analysis results (paper Fig. 1-9, 12, 13, 15): each plot function takes the
result(s) and `ax=None` and returns the Axes; `build_figures` assembles the captioned set of one analysis."""

from fastneurons.reporting.figures.across import (plot_cross_alive_frequency, plot_cross_dead_percent,
                                                  plot_cross_detectors, plot_cross_positional)
from fastneurons.reporting.figures.catalog import FigureItem, build_cross_figures, build_figures
from fastneurons.reporting.figures.dead import (plot_alive_frequency, plot_dead_percent, plot_domain_dead_percent,
                                                plot_domain_frequency)
from fastneurons.reporting.figures.ngrams import plot_coverage, plot_detected_ngrams, plot_detector_counts, plot_new_ngrams
from fastneurons.reporting.figures.positional import PositionalCurve, plot_on_ranges, plot_positional_curves, plot_positional_types
from fastneurons.reporting.figures.suppression import ProjectionExample, plot_projection_example, plot_suppression_by_layer

__all__ = [
    "FigureItem", "PositionalCurve", "ProjectionExample", "build_cross_figures", "build_figures",
    "plot_alive_frequency", "plot_coverage", "plot_cross_alive_frequency", "plot_cross_dead_percent",
    "plot_cross_detectors", "plot_cross_positional",
    "plot_dead_percent", "plot_detected_ngrams", "plot_detector_counts", "plot_domain_dead_percent",
    "plot_domain_frequency", "plot_new_ngrams", "plot_on_ranges", "plot_positional_curves",
    "plot_positional_types", "plot_projection_example", "plot_suppression_by_layer",
]

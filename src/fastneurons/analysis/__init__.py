"""Plain functions from count arrays to frozen result dataclasses (SPEC §3); no I/O, no models."""

from fastneurons.analysis.coverage import (PAPER_BINS, Coverage, CoverageHistogram, coverage_and_mass, coverage_histogram,
                       coverage_sizes, neuron_coverage)
from fastneurons.analysis.dead import DeadNeurons, dead_neurons, dead_neurons_per_layer
from fastneurons.analysis.detectors import DetectedNgrams, Detectors, detected_ngrams_by_layer, find_detectors, unpack_key
from fastneurons.analysis.domains import DomainBreakdown, domain_breakdown
from fastneurons.analysis.pipeline import AnalysisResults, AnalysisSettings, analyze_counts
from fastneurons.analysis.positional import Positional, positional_mi, positional_neurons
from fastneurons.analysis.suppression import (Suppression, SuppressionSummary, select_controls, summarize_suppression, suppression,
                          vocab_projection)

__all__ = [
    "PAPER_BINS", "AnalysisResults", "AnalysisSettings", "Coverage", "CoverageHistogram", "DeadNeurons",
    "DetectedNgrams", "Detectors", "DomainBreakdown", "Positional", "Suppression", "SuppressionSummary",
    "analyze_counts", "coverage_and_mass", "coverage_histogram", "coverage_sizes", "dead_neurons",
    "dead_neurons_per_layer", "detected_ngrams_by_layer", "domain_breakdown", "find_detectors", "neuron_coverage",
    "positional_mi", "positional_neurons", "select_controls", "summarize_suppression", "suppression",
    "unpack_key", "vocab_projection",
]

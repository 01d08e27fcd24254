"""Fréchet metrics (FID, FD_DINOv2, and any registered detector) and precision/recall for image sets and generators.

Layers, each usable on its own: `frechet` (the distance), `precision_recall` (k-NN manifolds in
float16 blocks), `detectors` (feature networks and the metric registry, each metric of a kind),
`kinds` (per kind: accumulator, reference entry, results), `image_files` (reading a directory/zip),
`stats` (float64 statistics and reference files), `pipeline` (the jobs behind `calculate_metrics.py`).
"""

from edmguide.metrics.detectors import (Detector, PickledFeatureNet, DINOv2Detector, register_metric,
                                        unregister_metric, metric_names, metric_label, get_detector,
                                        parse_metric_list, clear_detector_cache)
from edmguide.metrics.frechet import frechet_distance
from edmguide.metrics.precision_recall import PRFeatures  # (the function precision_recall would shadow the module)
from edmguide.metrics.stats import FeatureStats, load_reference, save_stats
from edmguide.metrics.pipeline import (compute_stats, compute_stats_for_images, frechet_to_reference,
                                       calc_metrics_for_images, calc_metrics_for_generator,
                                       calc_metrics_for_network, make_reference, gi_calculate_metric)

"""Layer 7, guidance sweeps over weights x intervals (sweep) and their reports (sweep_report), on top of the
generation iterator and the metrics."""

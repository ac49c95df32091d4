"""Data sets: toy 2-D and 1-D sets with exact smoothed densities (`dde.datasets.toy`),
the UCI sets scikit-learn ships, the MAF density suite and ADBench-format files."""

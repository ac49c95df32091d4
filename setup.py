"""Packaging for dde, a TensorFlow toolkit for Denoising Density Estimators."""
from pathlib import Path

from setuptools import find_packages, setup

here = Path(__file__).parent

setup(
    name="dde",
    version="0.1.0",
    description=(
        "Denoising Density Estimators in Keras: learned log-densities, Langevin sampling, "
        "partition functions, probability-flow likelihoods and anomaly scoring."
    ),
    long_description=(here / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["dde", "dde.*", "dde_cli"]),
    install_requires=[
        "tensorflow>=2.18",
        "keras>=3.6",
        "tensorflow-probability>=0.25",
        # TFP imports tf_keras on first use; its version must track TensorFlow's.
        "tf-keras>=2.18",
        "numpy>=1.26",
        "scipy>=1.11",
        "matplotlib>=3.8",
        "scikit-learn>=1.5",
    ],
    extras_require={
        "test": [
            "pytest>=8",
            "nbclient>=0.10",
            "nbformat>=5.10",
            "ipykernel>=6.29",
            # the MAF-suite loaders read a pandas pickle (GAS), CSV (HEPMASS) and HDF5
            "pandas>=2.0",
            "h5py>=3.10",
            # property-based tests of the command line (tests/test_cli_fuzz.py)
            "hypothesis>=6",
            # Parquet files (dde.streaming, tests/test_streaming.py)
            "pyarrow>=14",
            # PSIS k̂ checked against ArviZ's implementation (tests/test_partition.py)
            "arviz>=0.17,<1",
            # the detector's pyod conventions checked against pyod (tests/test_anomaly_explain.py)
            "pyod>=2",
        ],
        # Parquet data files for dde fit / score / density
        "parquet": ["pyarrow>=14"],
        "notebooks": ["jupyter", "nbformat>=5.10", "ipykernel>=6.29"],
        # benchmarks/anomaly.py runs pyod's detectors as peers
        "benchmarks": ["pandas>=2.0", "h5py>=3.10", "pyarrow>=14", "pyod>=2"],
    },
    entry_points={"console_scripts": ["dde=dde_cli:main"]},
    classifiers=[
        "Programming Language :: Python :: 3",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
)

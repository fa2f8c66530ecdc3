"""pixeltok: patch-size scaling studies for ViT and Adventurer (Mamba-2/SSD) in JAX + Flax NNX."""

from setuptools import find_packages, setup

# jax and flax are pinned to a minor version: NNX and the sharding APIs still move between minors.
INSTALL_REQUIRES = [
    "jax>=0.10.2,<0.11",
    "jaxlib>=0.10.2,<0.11",
    "flax>=0.12.8,<0.13",
    "optax>=0.2.8,<0.3",
    "orbax-checkpoint>=0.12.8,<0.13",
    "grain>=0.2.18,<0.3",
    "tensorflow-datasets>=4.9.10,<4.10",
    "ml-collections>=1.1.0,<1.2",
    "einops>=0.8.2,<0.9",
    "absl-py>=2.1,<3",
    "numpy>=2.0,<3",
    "scipy>=1.14,<2",
    "matplotlib>=3.9,<4",
    "pillow>=10,<14",          # TF-free image decoding for tfds.features.Image
    "tensorboardX>=2.6.2,<2.7",  # TensorBoard events without TensorFlow
    "threadpoolctl>=3.1,<4",    # scaling fits: 1 BLAS thread (tiny L-BFGS solves crawl when oversubscribed)
    "safetensors>=0.4,<1",      # pretrained weights: .safetensors through the numpy API (no torch needed)
]

# torch only reads/writes .pth checkpoints (pixeltok.convert) and runs the PyTorch parity tests. Pinned to the
# release whose CPU wheel (2.13.0+cpu) the Makefile installs first: any other torch from the index pulls CUDA.
TORCH = "torch==2.13.0"

EXTRAS = {
    "torch": [TORCH],
    "dev": [
        TORCH,
        "pytest>=8,<10",
        "pytest-xdist>=3.5,<4",
        "nbclient>=0.10,<0.11",
        "nbformat>=5.10,<6",
        "ipykernel>=6.29,<8",
    ],
}

setup(
    name="pixeltok",
    version="0.1.0",
    description="Scaling laws in patchification: ViT and Adventurer down to one pixel per token, in JAX.",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["pixeltok", "pixeltok.*"]),
    python_requires=">=3.10",
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS,
)

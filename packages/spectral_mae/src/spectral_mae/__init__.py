"""spectral_mae: see README.md."""

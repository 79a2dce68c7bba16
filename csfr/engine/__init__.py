"""Training and evaluation machinery behind `python -m csfr.train` and `python -m csfr.evaluate`."""

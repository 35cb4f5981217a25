"""Experiments as importable modules, each with a thin command line (``python experiments/NAME.py`` or ``python -m experiments.NAME``)."""

"""Labelled tiles, scaling, the training loop, evaluation, saving, data sets."""

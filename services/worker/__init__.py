"""HyCTAS workers: Ray actors wrapping :mod:`hyctas_core` evaluation and training."""

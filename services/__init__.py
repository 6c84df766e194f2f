"""HyCTAS services (controller, worker, serve): thin layers over :mod:`hyctas_core`."""

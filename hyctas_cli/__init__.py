"""The ``hyctas`` command line and the demo: the one package that imports both the method
(:mod:`hyctas_core`) and the service (:mod:`services`)."""

"""The ``xgen`` command line: a thin layer over :mod:`xgen_data` and :mod:`xgen_train`."""

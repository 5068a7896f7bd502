"""brainkit: a notebook course reproducing four brain-MRI vision-language methods end to end.

The package holds what more than one notebook cell needs; the notebooks in ``notebooks/``
teach. Nothing here touches the network at import. Start with ``notebooks/00_quickstart.ipynb``
or ``brainkit tutorial --profile smoke``.
"""

__version__ = "0.1.0"

"""Data: BrainPhantom, readers and writers of the real datasets' layouts, manifests, reports.

Introduced in ``01_data_prep``. ``brainkit.data`` imports no model.
"""

"""Tiny offline base models for the embedded default and the tests: ``tiny:random`` and ``tiny:arithmetic``
(``base.py``), ``tiny:reasoning`` (``reasoning.py``)."""

"""Synthetic district and EPP extracts for the gateway's demo, tests and benchmarks.

Not part of the gateway: it is its own small project (``synthetic/``), installed by
``make run`` and ``make test`` beside the gateway and left out of the product (the
Docker image installs the gateway alone). See :mod:`gateway_synthetic.extracts`.
"""

from gateway_synthetic.extracts import Extract, generate_agreement_extracts, write_evaluations_csv

__all__ = ["Extract", "generate_agreement_extracts", "write_evaluations_csv"]

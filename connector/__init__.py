"""meterstream: Kafka usage records to Stripe Billing meters, billed once.

The package is named ``connector``; the distribution and the command are ``meterstream``.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]

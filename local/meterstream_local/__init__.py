"""meterstream's local world: the Stripe emulator, a local Kafka broker, the demo, samples.

A distribution of its own (``meterstream-local``) so that ``pip install meterstream`` and
the Docker image carry only the connector; ``meterstream demo``, ``emulator`` and
``local-kafka`` import it lazily and say what to install when it is missing.
"""

#: Released together with meterstream, always at the same version (a test pins this).
__version__ = "0.1.0"

__all__ = ["__version__"]

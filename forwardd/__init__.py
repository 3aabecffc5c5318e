"""forwardd: a durable receiver for the Fluentd forward protocol."""

__version__ = "0.1.0"
__all__ = ["__version__"]

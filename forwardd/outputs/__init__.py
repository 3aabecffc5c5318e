"""Destinations: each is an :class:`~forwardd.outputs.base.Output` behind a buffer."""

"""Fakes that ship with the product: a scriptable pod runtime and stand-in tools.

Installed as ``jetpack.testing``.
"""

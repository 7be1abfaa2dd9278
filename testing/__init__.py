"""Fakes that ship with the product: a scriptable isolation driver and stand-in tools.

Installed as ``jetpack.testing``.
"""

"""The appc metadata service (``/acMetadata/v1``), served in the supervisor's event loop.

Installed as ``jetpack.mds``.
"""

"""jetpack: an App Container (appc 0.8.11) runtime and supervisor.

This package is stage0 (CLI, configuration, appc schema, image and pod stores, state database,
discovery and trust); stage1, stage2, the supervisor and the metadata service are its subpackages.
"""

__version__ = "0.1.0"

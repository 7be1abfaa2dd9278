"""stage2: what runs inside a pod to execute one app as appc's executor spec demands.

Credentials, environment, working directory, event handlers and the exec itself.
Installed as ``jetpack.stage2``.
"""

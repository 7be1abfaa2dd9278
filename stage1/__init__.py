"""stage1: pod isolation (FreeBSD jails in jail.py, Linux namespaces in linux.py), networking,
volumes and isolators. Installed as ``jetpack.stage1``; never imports the supervisor.

Kept import-free: the Linux helper (linux_init) imports this package in every app start.
"""

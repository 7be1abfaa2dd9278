"""The supervisor (``jetpack daemon``): one trio loop owning every pod's lifecycle.

Pod tasks and restart policies, the durable event log's live stream, the control API on the unix
socket and the metadata service all run here. Installed as ``jetpack.supervisor``.
"""

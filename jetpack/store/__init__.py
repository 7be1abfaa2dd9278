"""The image store and pod store: what is imported, prepared and where it lives."""

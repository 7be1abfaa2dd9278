"""The appc 0.8.11 schema: image and pod manifests and every type they use."""
